"""Writing the chosen layouts into the graph, and checking the result is a valid model.

Each non-dense choice is handed to its layout's ``materialize`` on one onnx-graphsurgeon graph;
afterwards the graph is cleaned (the replaced nodes and now-unused weights drop out), sorted,
exported with an IR version the installed ONNX Runtime reads, and passed through ``onnx.checker``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import onnx
import onnx_graphsurgeon as gs

from onnxprune.graph.candidates import Candidate
from onnxprune.graph.fold_restores import fold_channel_restores
from onnxprune.graph.load import stamp_ir_version
from onnxprune.layouts.base import Layout, PrunedWeight
from onnxprune.layouts.registry import get_layout

logger = logging.getLogger("onnxprune")


def _cut_structures(model: onnx.ModelProto, candidates: Sequence[Candidate],
                    chosen: Mapping[str, PrunedWeight]) -> onnx.ModelProto:
    """A copy of ``model`` with every chosen structure width written along its whole chain."""
    from onnxprune.layouts.structure import kept_channels
    from onnxprune.structures.shrink import StructureCut, apply_cuts

    cuts, weights = [], {}
    for cand in candidates:
        solution = chosen.get(cand.name)
        if solution is None or solution.option.layout != "structure" or cand.structure is None:
            continue
        cuts.append(StructureCut(cand.structure.structure, kept_channels(cand, solution)))
        weights[cand.name] = solution.weight
        weights.update((c.name, c.weight) for c in solution.companions)
    if not cuts:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    by_name = {c.name: c for c in candidates}
    for cand in candidates:
        if cand.structure is not None:
            for producer in (*cand.structure.producers, *cand.structure.companions):
                by_name.setdefault(producer.name, producer)
    logger.info("shrinking %d structure(s) along their chains", len(cuts))
    return apply_cuts(copy, cuts, by_name, weights)


def materialize(
    model: onnx.ModelProto,
    candidates: Sequence[Candidate],
    chosen: Mapping[str, PrunedWeight],
    layouts: Mapping[str, Layout] | None = None,
) -> onnx.ModelProto:
    """A new model with every candidate rewritten to its chosen solution (input untouched).

    Args:
        model: the input model (not modified).
        candidates: the candidates.
        chosen: solution per candidate name (dense or missing: left as is).
        layouts: configured layout objects by name, overriding the registry's defaults (e.g.
            ``Unstructured(sparse_storage=True)``).

    Raises:
        onnx.checker.ValidationError: the rewritten model is invalid (an internal error).
    """
    model = _cut_structures(model, candidates, chosen)
    graph = gs.import_onnx(model)
    for cand in candidates:
        solution = chosen.get(cand.name)
        if solution is None or solution.option.layout in ("dense", "structure"):
            continue
        name = solution.option.layout
        layout = (layouts or {}).get(name) or get_layout(name)
        layout.materialize(graph, cand, solution)
    graph.cleanup().toposort()
    # Where a pruned channel's restore feeds another prunable node through elementwise ops only,
    # shrink that consumer instead of restoring the shape (exact; see fold_restores.py).
    folded = fold_channel_restores(graph)
    if folded:
        logger.info("folded %d channel restore(s) into their consumers", folded)
        graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    for prop in model.metadata_props:
        if not any(p.key == prop.key for p in out.metadata_props):
            out.metadata_props.append(prop)
    out.producer_name = "onnxprune"
    stamp_ir_version(out)
    onnx.checker.check_model(out)
    return out
