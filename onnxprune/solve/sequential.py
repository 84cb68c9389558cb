"""Sequential reconstruction: later layers are re-solved on already-pruned activations.

The database is solved on dense activations (every layer sees the dense model's inputs), which is
what the allocator needs to compare layers fairly. Once the allocation is fixed, SparseGPT's
sequential mode gives a better final model: walk the candidates in graph order, collect each
layer's Hessian from the model whose earlier layers are already pruned, and solve the chosen option
again on those inputs, so each layer compensates for the error upstream of it.

With ``feedback`` (Kwon et al. 2022's error feedback) the solve also targets the *dense* model's
output of the layer, not the layer's own output on the pruned input: ``min ‖Ŵ·X_p − W·X_d‖²``
(plus ``λ‖Ŵ − W‖²``, the usual 1% dampening, pulling weakly excited directions back to W rather
than to zero). Its minimiser without a mask is ``W* = (W·C + λW)·(H_p + λI)⁻¹`` with the cross
moment ``C = X_dᵀX_p``, and ``‖Ŵ·X_p − W·X_d‖² = ‖(Ŵ − W*)·X_p‖² + const``, so OBS solved on W*
and H_p gives the masked solution of the same problem: the layer absorbs the error upstream.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
import scipy.linalg

from onnxprune.calib.collect import collect_hessians, padding_masks, reduction_rows
from onnxprune.calib.dataset import CalibSet
from onnxprune.calib.stitch import StitchedRunner
from onnxprune.graph.candidates import Candidate
from onnxprune.layouts.base import PrunedWeight, from_rows, to_rows
from onnxprune.layouts.structure import GroupSolver
from onnxprune.solve.database import make_solver, solve_options

logger = logging.getLogger("onnxprune")


def graph_order(model: onnx.ModelProto, candidates: Sequence[Candidate]) -> list[Candidate]:
    """Candidates sorted by the position of their first node in the (topologically sorted) graph."""
    position = {node.name: i for i, node in enumerate(model.graph.node)}
    return sorted(candidates, key=lambda c: min(position[s.node] for s in c.sites))


def sequential_resolve(
    runner: StitchedRunner,
    model: onnx.ModelProto,
    candidates: Sequence[Candidate],
    chosen: Mapping[str, PrunedWeight],
    calib: CalibSet,
    progress: Callable[[str], None] | None = None,
    feedback: bool = False,
) -> dict[str, PrunedWeight]:
    """Re-solve every non-dense chosen option on the activations of the partly pruned model.

    Args:
        runner: a stitched runner over ``model`` exposing every site's activation (the one the
            pipeline already holds; no new session is made here).
        model: the original model, for the graph order.
        candidates: the candidates.
        chosen: the allocation to re-solve, by candidate name.
        calib: the calibration batches the statistics are collected on.
        progress: called with each candidate's name once it is done.
        feedback: target the dense model's output of each layer (module docstring).

    Returns:
        The new solutions by candidate name (dense choices are passed through).
    """
    result: dict[str, PrunedWeight] = dict(chosen)
    pruned_weights: dict[str, np.ndarray] = {}
    for cand in graph_order(model, candidates):
        current = chosen[cand.name]
        if current.option.layout != "dense":
            current = _resolve_one(runner, cand, current, calib, pruned_weights, feedback)
            result[cand.name] = current
            pruned_weights[cand.name] = current.weight
            # a group's other consumers come later in the graph; their part is solved here,
            # on the inputs the pruned layers so far give them
            pruned_weights.update((c.name, c.weight) for c in current.companions)
        if progress:
            progress(cand.name)
    return result


def _resolve_one(runner: StitchedRunner, cand: Candidate, current: PrunedWeight,
                 calib: CalibSet, pruned_weights: Mapping[str, np.ndarray],
                 feedback: bool) -> PrunedWeight:
    """``current``'s option solved again on the inputs of the partly pruned model."""
    companions = cand.structure.companions if current.companions else ()
    if feedback and pruned_weights:
        problems = [feedback_problem(runner, c, calib, pruned_weights)
                    for c in (cand, *companions)]
        stars = [dataclasses.replace(c, weight=target)
                 for c, (_, target) in zip((cand, *companions), problems, strict=True)]
        solver = make_solver(stars[0], problems[0][0])
        if companions:  # the other consumers solve for their own feedback targets too
            solver = GroupSolver(solver.decider, tuple(
                (star, H) for star, (H, _) in zip(stars[1:], problems[1:], strict=True)))
        (solved,) = solve_options(stars[0], solver, [current.option])
        return solved
    hessians = collect_hessians(runner, [cand, *companions], calib, weights=pruned_weights)
    solver = make_solver(cand, hessians[cand.name].H,
                         {c.name: hessians[c.name].H for c in companions})
    (solved,) = solve_options(cand, solver, [current.option])
    return solved


FEEDBACK_DAMP = 0.01
"""λ of the error-feedback solve, relative to the mean diagonal of H_p (OBS's dampening)."""


def feedback_problem(runner: StitchedRunner, cand: Candidate, calib: CalibSet,
                     pruned_weights: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(H_p, W*): the pruned-input Hessian and the canonical weight whose OBS solve on H_p
    minimises ``‖Ŵ·X_p − W·X_d‖² + λ‖Ŵ − W‖²`` (module docstring).

    Both moments are accumulated in float64 over the same rows of the same batches, in the
    ``(2/n)·Σ`` scale of :class:`~onnxprune.reconstruct.hessian.HessianAccumulator`.
    """
    k = cand.reduction_dim
    H = np.zeros((k, k))
    C = np.zeros((k, k))  # (2/n)·Σ x_dᵀ x_p
    rows_seen = 0
    names = list(dict.fromkeys(site.activation for site in cand.sites))
    for feed in calib.batches:
        pruned = runner.run(feed, pruned_weights, outputs=names)
        dense = runner.run(feed, None, outputs=names)
        masks = padding_masks(feed)
        for site in cand.sites:
            xp, xd = pruned[site.activation], dense[site.activation]
            mask = masks.get(tuple(xp.shape[:2])) if xp.ndim == 3 else None
            if mask is not None and cand.op != "Conv":
                xp, xd = xp[mask], xd[mask]
            rp = reduction_rows(cand, xp).astype(np.float64)
            rd = reduction_rows(cand, xd).astype(np.float64)
            H += rp.T @ rp
            C += rd.T @ rp
            rows_seen += rp.shape[0]
    scale = 2.0 / max(rows_seen, 1)
    H *= scale
    C *= scale
    W = to_rows(cand, cand.weight).astype(np.float64)  # [N, K]
    damp = FEEDBACK_DAMP * max(float(np.mean(np.diag(H))), 1e-12)
    rhs = C.T @ W.T + damp * W.T  # (W·C + λW)ᵀ
    target_t = scipy.linalg.solve(H + damp * np.eye(k), rhs, assume_a="pos")
    return H, from_rows(cand, target_t.T.astype(np.float32))
