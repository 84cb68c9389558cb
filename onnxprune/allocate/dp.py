"""SPDY's dynamic program: one option per layer, least total error within a time budget.

The prunable time budget is cut into ``buckets`` equal units; each option's measured time is
rounded *up* to whole units, so any allocation the DP returns fits the budget in real seconds too.
The DP is a multiple-choice knapsack: ``best[b]`` is the least Σ coef·err over the layers seen so
far whose times sum to at most ``b`` units. Vectorized over buckets, it costs
O(layers · options · buckets), a few milliseconds for dozens of layers at 10⁴ buckets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_BUCKETS = 10_000


@dataclass(frozen=True)
class LayerChoices:
    """The options of one layer as the DP sees them.

    Attributes:
        name: candidate name.
        times: [options] predicted seconds of each option (dense included).
        errors: [options] normalized layer error of each option (0 for dense).
    """

    name: str
    times: np.ndarray
    errors: np.ndarray


def solve_dp(
    layers: Sequence[LayerChoices],
    budget: float,
    coefs: np.ndarray | None = None,
    buckets: int = DEFAULT_BUCKETS,
) -> list[int] | None:
    """Pick one option index per layer minimizing Σ coef·err subject to Σ time ≤ budget.

    Args:
        layers: options per layer.
        budget: seconds available to all layers together.
        coefs: [layers] sensitivity coefficient per layer (SPDY's search tunes these); ones if None.
        buckets: time discretization.

    Returns:
        Option index per layer, or None when even the fastest options exceed the budget.
    """
    if not layers:
        return []
    # A structure option's time is its consumer's time minus what the whole structure saves, so
    # it can be negative. Shifting each layer by its fastest option keeps costs non-negative and
    # the problem the same.
    offsets = [float(np.min(layer.times)) for layer in layers]
    if any(offset < 0 for offset in offsets):
        shifted = [
            LayerChoices(layer.name, np.asarray(layer.times, dtype=np.float64) - offset,
                         layer.errors)
            for layer, offset in zip(layers, offsets, strict=True)
        ]
        return solve_dp(shifted, budget - sum(offsets), coefs, buckets)
    if budget <= 0:
        return None
    coefs = np.ones(len(layers)) if coefs is None else np.asarray(coefs, dtype=np.float64)
    unit = budget / buckets
    best = np.zeros(buckets + 1)
    choices = np.zeros((len(layers), buckets + 1), dtype=np.int32)
    costs_per_layer = []
    for index, layer in enumerate(layers):
        costs = np.ceil(np.asarray(layer.times, dtype=np.float64) / unit - 1e-9).astype(np.int64)
        costs = np.maximum(costs, 0)
        costs_per_layer.append(costs)
        errors = coefs[index] * np.asarray(layer.errors, dtype=np.float64)
        new = np.full(buckets + 1, np.inf)
        pick = np.zeros(buckets + 1, dtype=np.int32)
        for option, (cost, err) in enumerate(zip(costs, errors, strict=True)):
            if cost > buckets:
                continue
            candidate = np.full(buckets + 1, np.inf)
            candidate[cost:] = best[: buckets + 1 - cost] + err
            better = candidate < new
            new[better] = candidate[better]
            pick[better] = option
        best = new
        choices[index] = pick
    if not np.isfinite(best[buckets]):
        return None
    result = [0] * len(layers)
    remaining = buckets
    for index in range(len(layers) - 1, -1, -1):
        option = int(choices[index, remaining])
        result[index] = option
        remaining -= int(costs_per_layer[index][option])
    return result


def fastest(layers: Sequence[LayerChoices]) -> list[int]:
    """Index of each layer's fastest option (ties: the least error)."""
    return [int(np.lexsort((layer.errors, layer.times))[0]) for layer in layers]
