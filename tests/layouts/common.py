"""Shared steps of the layout tests: analyse, solve with identity H, materialize, run, compare."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from hypothesis import HealthCheck, settings

from onnxprune.common.runtime import RuntimeConfig, make_session
from onnxprune.graph.candidates import Candidate, ensure_node_names, find_candidates
from onnxprune.graph.load import stamp_ir_version
from onnxprune.graph.shapes import bind_input_shapes
from onnxprune.layouts.base import Layout, LayoutOption, PrunedWeight, to_rows
from onnxprune.reconstruct.obs import ObsSolver

SETTINGS = settings(
    max_examples=int(os.environ.get("LAYOUT_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize="LAYOUT_EXAMPLES" not in os.environ,
)


def only_candidate(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> Candidate:
    ensure_node_names(model)
    analysis = find_candidates(model, bind_input_shapes(model, shapes))
    assert len(analysis.candidates) == 1, analysis
    return analysis.candidates[0]


def candidates(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> dict[str, Candidate]:
    ensure_node_names(model)
    return {c.name: c for c in find_candidates(model, bind_input_shapes(model, shapes)).candidates}


def identity_solver(candidate: Candidate) -> ObsSolver:
    """Data-free (magnitude) solver: identity H, no update."""
    rows = to_rows(candidate, candidate.weight)
    return ObsSolver(rows, np.eye(rows.shape[1]))


def solve(layout: Layout, candidate: Candidate, option: LayoutOption) -> PrunedWeight:
    pruned = layout.solve(candidate, identity_solver(candidate), option)
    assert pruned.weight.shape == candidate.weight.shape
    assert not np.any(pruned.weight[~pruned.mask])
    return pruned


def materialized(
    model: onnx.ModelProto,
    layout: Layout,
    candidate: Candidate,
    pruned: PrunedWeight,
    post: Callable[[gs.Graph], object] | None = None,
) -> onnx.ModelProto:
    """Materialize on a copy (then run ``post`` on the graph); assert the input model is unchanged
    and the result is valid."""
    before = model.SerializeToString()
    graph = gs.import_onnx(model)
    layout.materialize(graph, candidate, pruned)
    if post is not None:
        post(graph)
    graph.cleanup().toposort()
    out = stamp_ir_version(gs.export_onnx(graph))
    assert model.SerializeToString() == before, "materialize changed the input model"
    # onnx's shape inference does not read sparse_initializer shapes (ORT does).
    onnx.checker.check_model(out, full_check=not out.graph.sparse_initializer)
    return out


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = make_session(model, RuntimeConfig(threads=1))
    return session.run(None, feeds)


def assert_same_outputs(
    model: onnx.ModelProto, reference: onnx.ModelProto, feeds: dict[str, np.ndarray]
) -> None:
    got, want = run(model, feeds), run(reference, feeds)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        scale = float(np.abs(w).max()) if w.size else 1.0
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def initializer_sizes(model: onnx.ModelProto) -> dict[str, int]:
    return {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}


def feeds_for(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
