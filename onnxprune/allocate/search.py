"""SPDY's search over per-layer sensitivity coefficients.

Layer errors are not equally harmful to the model's output. SPDY therefore multiplies each layer's
error by a coefficient before the DP and searches the coefficients, scoring each resulting
allocation by the real calibration loss of the stitched model. The search starts from all-ones
(the plain DP, so it never ends worse than it), samples random coefficient vectors, then runs a
local search that resamples a shrinking fraction of the coefficients around the best vector.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from onnxprune.allocate.dp import LayerChoices, solve_dp

logger = logging.getLogger("onnxprune")

EXHAUSTED_AFTER = 200
"""Coefficient vectors tried in a row without a new allocation before the search stops: a small
model has fewer distinct allocations than an evaluation budget (``--search-budget 200e``), and
without this the search would spin until its one-hour time cap."""


@dataclass(frozen=True)
class SearchResult:
    """Best allocation found, its coefficients, its loss and how much was evaluated."""

    choice: list[int]
    coefs: np.ndarray
    loss: float
    evaluations: int
    initial_loss: float


def spdy_search(
    layers: Sequence[LayerChoices],
    budget: float,
    score: Callable[[list[int]], float],
    *,
    seconds: float,
    max_evaluations: int = 400,
    random_starts: int = 8,
    seed: int = 0,
    initial_coefs: np.ndarray | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> SearchResult | None:
    """Search coefficients; ``score(choice)`` returns the calibration loss of an allocation.

    Args:
        layers: the DP's options per layer.
        budget: prunable time budget (seconds).
        score: loss of an allocation (lower is better), e.g. output MSE vs the dense model.
        seconds: wall-time budget of the search.
        max_evaluations: cap on distinct allocations scored.
        random_starts: random coefficient vectors tried after all-ones, before the local search.
        seed: RNG seed.
        initial_coefs: coefficients found earlier (e.g. at a looser budget); the local search
            starts from them when they score better than all-ones.
        progress: called with (evaluations, best loss) after each evaluation.

    Returns:
        The best allocation, or None when the budget is infeasible.
    """
    rng = np.random.default_rng(seed)
    deadline = time.monotonic() + seconds
    cache: dict[tuple[int, ...], float] = {}
    repeats = 0  # coefficient vectors in a row that gave an allocation already scored

    def evaluate(coefs: np.ndarray) -> tuple[list[int] | None, float]:
        nonlocal repeats
        repeats += 1
        choice = solve_dp(layers, budget, coefs)
        if choice is None:
            return None, np.inf
        key = tuple(choice)
        if key not in cache:
            repeats = 0
            cache[key] = float(score(choice))
            if progress:
                progress(len(cache), min(cache.values()))
        return choice, cache[key]

    ones = np.ones(len(layers))
    best_choice, best_loss = evaluate(ones)
    if best_choice is None:
        return None
    initial = best_loss
    best_coefs = ones
    if initial_coefs is not None:
        choice, loss = evaluate(np.asarray(initial_coefs, dtype=np.float64))
        if choice is not None and loss < best_loss:
            best_choice, best_loss, best_coefs = choice, loss, np.asarray(initial_coefs)
        random_starts = 0

    def out_of_budget() -> bool:
        return (time.monotonic() >= deadline or len(cache) >= max_evaluations
                or repeats >= EXHAUSTED_AFTER)

    for _ in range(random_starts):
        if out_of_budget():
            break
        coefs = rng.uniform(0.0, 1.0, len(layers))
        choice, loss = evaluate(coefs)
        if choice is not None and loss < best_loss:
            best_choice, best_loss, best_coefs = choice, loss, coefs
    fraction = 0.5
    stale = 0
    while not out_of_budget() and len(layers) > 0:
        coefs = best_coefs.copy()
        count = max(1, int(round(fraction * len(layers))))
        picked = rng.choice(len(layers), size=count, replace=False)
        coefs[picked] = rng.uniform(0.0, 1.0, count)
        choice, loss = evaluate(coefs)
        if choice is not None and loss < best_loss:
            best_choice, best_loss, best_coefs = choice, loss, coefs
            stale = 0
        else:
            stale += 1
            if stale >= 10:
                fraction = max(1.0 / len(layers), fraction * 0.7)
                stale = 0
    logger.debug("SPDY search: %d allocations scored, loss %.4g -> %.4g", len(cache), initial,
                 best_loss)
    return SearchResult(best_choice, best_coefs, best_loss, len(cache), initial)
