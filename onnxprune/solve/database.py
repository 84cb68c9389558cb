"""The per-layer database: every allowed option of every candidate, solved once.

For each candidate, one :class:`~onnxprune.reconstruct.obs.ObsSolver` is built (one factorization
of its Hessian) and every option is solved with it, so the allocator can look up the error of any
(layer, option) pair and the search can stitch any allocation without solving again. Without
calibration data the Hessian is the identity: no weight update, and the error is the share of the
weight's energy removed (the data-free proxy).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from onnxprune.graph.candidates import Candidate
from onnxprune.layouts.base import DENSE, LayoutOption, PrunedWeight, to_rows
from onnxprune.layouts.registry import get_layout
from onnxprune.layouts.structure import GroupSolver
from onnxprune.reconstruct.obs import ObsSolver

logger = logging.getLogger("onnxprune")


def make_solver(candidate: Candidate, hessian: np.ndarray | None,
                companions: Mapping[str, np.ndarray] | None = None,
                ) -> ObsSolver | GroupSolver:
    """The layer's OBS solver; the identity Hessian when there is no calibration data.

    A candidate deciding a coupled group gets a :class:`GroupSolver`: ``companions`` holds the
    Hessian of each other consumer of the group by name (every candidate's statistics are
    collected, and a group's consumers are all candidates); None: the identity for each.
    """
    rows = to_rows(candidate, candidate.weight)
    if hessian is None:
        hessian = np.eye(rows.shape[1])
    solver = ObsSolver(rows, hessian)
    others = candidate.structure.companions if candidate.structure is not None else ()
    if not others:
        return solver
    return GroupSolver(solver, tuple(
        (c, np.eye(c.reduction_dim) if companions is None else companions[c.name])
        for c in others))


def dense_solution(candidate: Candidate) -> PrunedWeight:
    return PrunedWeight(DENSE, np.ones(candidate.weight.shape, bool), candidate.weight, 0.0)


def solve_options(
    candidate: Candidate, solver: ObsSolver, options: Sequence[LayoutOption]
) -> list[PrunedWeight]:
    """Solve each option of one candidate with its (shared) solver."""
    solved = []
    for option in options:
        if option.layout == "dense":
            solved.append(dense_solution(candidate))
        else:
            solved.append(get_layout(option.layout).solve(candidate, solver, option))
    return solved


ENERGY_FLOOR = 0.01
"""An output channel's energy is floored at this share of the median channel's before it
divides the channel's error, so a channel that is silent on the held-out data cannot weigh
more than a typical one."""


def layer_errors(W: np.ndarray, D: np.ndarray, hessian: np.ndarray) -> tuple[float, float]:
    """The two errors of a weight change ``D`` to rows ``W`` [N outputs, K] under ``hessian``:
    per channel, ``mean_n (d_n H d_nᵀ) / (w_n H w_nᵀ)``, and energy-weighted,
    ``tr(D H Dᵀ) / tr(W H Wᵀ)``.

    Why per channel: the energy-weighted error is the error of the few channels that carry most
    of the energy. On MiniLM-L6 five of an FFN's 384 output channels carry 98% of it (RMS 39
    against a median 0.27): keeping 96 of 1536 neurons scored 0.0085 while the median channel
    lost half of itself (0.49), so the DP pruned FFNs to 6% and the model broke. The fidelity
    bound's channel error is scale-free for the same reason. The energy-weighted one is kept
    beside it because at light cuts it chose the better MiniLM allocations (docs/recovery.md);
    the allocation search scores both and keeps the better (``contract/rounds.py``).
    """
    energy = np.einsum("nk,nk->n", W @ hessian, W)
    if not (energy > 0).any():
        return 0.0, 0.0
    removed = np.maximum(np.einsum("nk,nk->n", D @ hessian, D), 0.0)
    floor = ENERGY_FLOOR * float(np.median(energy[energy > 0]))
    return (float(np.mean(removed / np.maximum(energy, floor))),
            float(removed.sum() / energy.sum()))


def heldout_errors(candidate: Candidate, solution: PrunedWeight, hessian: np.ndarray
                   ) -> tuple[float, float]:
    """:func:`layer_errors` of ``solution`` on the Hessian of data the solve did not see."""
    W = to_rows(candidate, candidate.weight).astype(np.float64)
    D = to_rows(candidate, solution.weight).astype(np.float64) - W
    return layer_errors(W, D, hessian)


def with_heldout_error(candidate: Candidate, solution: PrunedWeight,
                       heldout: Mapping[str, np.ndarray]) -> PrunedWeight:
    """``solution`` with both its errors measured on held-out statistics; a group's errors are
    sums over its consumers (each consumer's output error counts as a pruned layer's does)."""
    if solution.option.layout == "dense" or candidate.name not in heldout:
        return solution
    others = {c.name: c for c in candidate.structure.companions} if solution.companions else {}
    companions, energy = [], 0.0
    for c in solution.companions:
        if c.name in heldout:
            per_channel, weighted = heldout_errors(
                others[c.name], dataclasses.replace(solution, weight=c.weight), heldout[c.name])
            c = dataclasses.replace(c, err=per_channel)
            energy += weighted
        companions.append(c)
    own, own_energy = heldout_errors(candidate, solution, heldout[candidate.name])
    return PrunedWeight(solution.option, solution.mask, solution.weight,
                        own + sum(c.err for c in companions), tuple(companions),
                        err_energy=own_energy + energy)


def build_database(
    candidates: Sequence[Candidate],
    options: Mapping[str, Sequence[LayoutOption]],
    hessians: Mapping[str, np.ndarray] | None,
    progress: Callable[[str], None] | None = None,
    heldout: Mapping[str, np.ndarray] | None = None,
) -> dict[str, list[PrunedWeight]]:
    """Solve every option of every candidate.

    Args:
        candidates: the candidates.
        options: per candidate name, its options (dense included by the caller).
        hessians: per candidate name, its H; None for the data-free proxy.
        progress: called with each candidate's name once it is solved.
        heldout: per candidate name, the H of calibration data the solve does not see. Each
            option's error is then measured there: OBS compensation fits the samples it saw,
            and on EfficientNet-Lite0 the in-sample error of a structure was 10-30x below the
            held-out one (0.0029 vs 0.0886), which made the DP prune far too much.
    """
    database: dict[str, list[PrunedWeight]] = {}
    for cand in candidates:
        hessian = None if hessians is None else hessians[cand.name]
        solver = make_solver(cand, hessian, hessians)
        solved = solve_options(cand, solver, options[cand.name])
        if heldout is not None:
            solved = [with_heldout_error(cand, s, heldout) for s in solved]
        database[cand.name] = solved
        if progress:
            progress(cand.name)
    return database
