"""Sequential reconstruction: later layers are re-solved on already-pruned activations.

The database is solved on dense activations (every layer sees the dense model's inputs), which is
what the allocator needs to compare layers fairly. Once the allocation is fixed, SparseGPT's
sequential mode gives a better final model: walk the candidates in graph order, collect each
layer's Hessian from the model whose earlier layers are already pruned, and solve the chosen option
again on those inputs, so each layer compensates for the error upstream of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import onnx

from onnxprune.calib import CalibSet
from onnxprune.graph.candidates import Candidate
from onnxprune.layouts.base import PrunedWeight
from onnxprune.reconstruct.collect import collect_hessians
from onnxprune.reconstruct.stitch import StitchedRunner
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

    Returns:
        The new solutions by candidate name (dense choices are passed through).
    """
    result: dict[str, PrunedWeight] = dict(chosen)
    pruned_weights = {}
    for cand in graph_order(model, candidates):
        current = chosen[cand.name]
        if current.option.layout != "dense":
            hessians = collect_hessians(runner, [cand], calib, weights=pruned_weights)
            solver = make_solver(cand, hessians[cand.name].H)
            (current,) = solve_options(cand, solver, [current.option])
            result[cand.name] = current
            pruned_weights[cand.name] = current.weight
        if progress:
            progress(cand.name)
    return result
