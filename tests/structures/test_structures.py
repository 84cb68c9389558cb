"""Structure discovery, and every structure rewrite against the masked-dense model."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from onnxprune.graph.candidates import find_candidates
from onnxprune.graph.shapes import bind_input_shapes, infer_tensor_shapes
from onnxprune.structures.discover import find_structures
from onnxprune.structures.shrink import (
    StructureCut,
    apply_cuts,
    isolated_structure,
    masked_consumer_weight,
)
from tests.models import init, make_model, tensor
from tests.structures.builders import CONV_OPS, MATMUL_OPS, conv_chain, ffn_model


def _discover(model: onnx.ModelProto, shapes: dict):
    bound = bind_input_shapes(model, shapes)
    analysis = find_candidates(model, bound)
    tensor_shapes = infer_tensor_shapes(model, bound,
                                        required=[o for n in model.graph.node for o in n.output])
    return analysis, find_structures(model, analysis, tensor_shapes)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Every output, concatenated flat (a second output must stay exact too)."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([np.ravel(y) for y in session.run(None, {"x": x})])


def _check_exact(model: onnx.ModelProto, shapes: dict, batches: tuple[int, ...], seed: int,
                 keep_fraction: float = 0.5) -> None:
    """Shrink every structure found and compare with the consumer rows zeroed (masked-dense)."""
    analysis, found = _discover(model, shapes)
    assert found.structures, [b.reason for b in found.blocked]
    candidates = {c.name: c for c in analysis.candidates}
    rng = np.random.default_rng(seed)
    cuts, weights = [], {}
    for structure in found.structures:
        keep = max(1, int(structure.width * keep_fraction))
        kept = np.sort(rng.choice(structure.width, keep, replace=False))
        cuts.append(StructureCut(structure, kept))
        consumer = candidates[structure.consumer]
        weights[consumer.name] = masked_consumer_weight(structure, consumer, consumer.weight, kept)
    reference = apply_cuts(copy.deepcopy(model), [], candidates, weights)
    shrunk = apply_cuts(copy.deepcopy(model), cuts, candidates, weights)
    onnx.checker.check_model(shrunk, full_check=True)
    before = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    after = sum(int(np.prod(t.dims)) for t in shrunk.graph.initializer)
    assert after < before  # the chain really shrank
    name, shape = next(iter(shapes.items()))
    for batch in batches:  # dynamic dims survive: run at batch sizes other than the bound one
        x = rng.standard_normal((batch, *shape[1:])).astype(np.float32)
        want, got = _run(reference, x), _run(shrunk, x)
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * float(np.abs(want).max()))


def test_ffn_with_exported_gelu_is_one_structure():
    model = ffn_model(16, ["bias", "gelu"])
    analysis, found = _discover(model, {"x": (2, 3, 12)})
    (structure,) = found.structures
    assert structure.kind == "ffn" and structure.width == 16 and structure.consumer == "down"
    ops = {n.op_type for n in model.graph.node if n.name in structure.members}
    assert ops == {"Add", "Div", "Erf", "Mul"}  # bias and all five GELU ops shrink with it
    assert [s.node for s in structure.slices] == [structure.members[0]]  # the per-channel bias


def test_conv_chain_through_batchnorm_and_depthwise():
    model = conv_chain(8, ["bn", "relu", "depthwise", "clip"])
    _, found = _discover(model, {"x": (1, 3, 6, 6)})
    (structure,) = found.structures
    assert structure.kind == "conv-chain" and structure.width == 8
    assert len(structure.depthwise) == 1 and len(structure.batchnorms) == 1


def test_flatten_into_a_classifier_groups_features_per_channel():
    model = conv_chain(4, ["relu"], flatten=True)
    _, found = _discover(model, {"x": (2, 3, 6, 6)})
    (structure,) = found.structures
    assert structure.consumer == "fc" and structure.consumer_group == 36  # 6x6 per channel


def test_residual_graph_output_and_two_consumers_block_with_reasons():
    rng = np.random.default_rng(0)
    w = init("w", rng.standard_normal((6, 6)))
    v = init("v", rng.standard_normal((6, 6)))
    u = init("u", rng.standard_normal((6, 6)))
    residual = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="up"),
         helper.make_node("Add", ["h", "x"], ["r"], name="residual"),
         helper.make_node("MatMul", ["r", "v"], ["y"], name="down")],
        [tensor("x", ["b", 6])], [tensor("y", ["b", 6])], [w, v])
    _, found = _discover(residual, {"x": (2, 6)})
    reasons = {b.producer: b.reason for b in found.blocked}
    assert "joins the channels with another tensor" in reasons["up"]
    assert "graph output" in reasons["down"]
    forked = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="up"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "v"], ["y1"], name="left"),
         helper.make_node("MatMul", ["r", "u"], ["y2"], name="right")],
        [tensor("x", ["b", 6])], [tensor("y1", ["b", 6]), tensor("y2", ["b", 6])], [w, v, u])
    _, found = _discover(forked, {"x": (2, 6)})
    assert {b.producer: b.reason for b in found.blocked}["up"] == "read by 2 consumers"


def test_isolated_structure_runs_at_every_width():
    model = conv_chain(8, ["bn", "relu", "depthwise"])
    analysis, found = _discover(model, {"x": (2, 3, 6, 6)})
    candidates = {c.name: c for c in analysis.candidates}
    (structure,) = found.structures
    isolated = isolated_structure(model, structure, candidates)
    x = np.ones((2, 3, 6, 6), np.float32)
    assert _run(isolated, x).shape == (2 * 5 * 6 * 6,)
    small = apply_cuts(copy.deepcopy(isolated), [StructureCut(structure, np.arange(3))],
                       candidates)
    assert _run(small, x).shape == (2 * 5 * 6 * 6,)
    weights = {t.name: t for t in small.graph.initializer}
    assert any(list(t.dims) == [3, 1, 3, 3] for t in weights.values())  # depthwise shrank


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.sampled_from(MATMUL_OPS), max_size=4), width=st.integers(2, 24),
       seed=st.integers(0, 1000), keep=st.floats(0.05, 0.95), residual=st.booleans())
def test_ffn_rewrites_equal_masked_dense(ops, width, seed, keep, residual):
    model = ffn_model(width, ops, seed=seed, residual=residual)
    _check_exact(model, {"x": (2, 3, 12)}, batches=(1, 5), seed=seed, keep_fraction=keep)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.sampled_from(CONV_OPS), max_size=4), width=st.integers(2, 16),
       seed=st.integers(0, 1000), keep=st.floats(0.05, 0.95), flatten=st.booleans())
def test_conv_rewrites_equal_masked_dense(ops, width, seed, keep, flatten):
    model = conv_chain(width, ops, seed=seed, flatten=flatten)
    _check_exact(model, {"x": (2, 3, 6, 6)}, batches=(1, 3), seed=seed, keep_fraction=keep)


@pytest.mark.parametrize("ops", [["relu"], ["bn", "relu", "depthwise", "clip"]])
def test_two_chained_structures_shrink_the_middle_conv_on_both_sides(ops):
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        helper.make_node("Conv", ["ra", "wb"], ["b"], name="b", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b"], ["rb"], name="relu_b"),
        helper.make_node("Conv", ["rb", "wc"], ["y"], name="c", pads=[1, 1, 1, 1]),
    ]
    inits = [init("wa", rng.standard_normal((6, 3, 3, 3))),
             init("wb", rng.standard_normal((8, 6, 3, 3))),
             init("wc", rng.standard_normal((4, 8, 3, 3)))]
    model = make_model(nodes, [tensor("x", ["n", 3, 5, 5])], [tensor("y", ["n", 4, 5, 5])], inits)
    _, found = _discover(model, {"x": (1, 3, 5, 5)})
    assert [(s.producer, s.consumer) for s in found.structures] == [("a", "b"), ("b", "c")]
    _check_exact(model, {"x": (1, 3, 5, 5)}, batches=(2,), seed=1)


def test_attention_heads_and_ffns_of_the_shipped_transformer_shrink_exactly():
    from pathlib import Path

    from onnxprune.graph.load import load_model

    path = Path(__file__).resolve().parents[2] / "models" / "digits_transformer.onnx"
    model = load_model(path)
    analysis, found = _discover(model, {"input": (4, 8, 8)})
    kinds = sorted(s.kind for s in found.structures)
    assert kinds == ["ffn", "ffn", "heads", "heads"]
    heads = next(s for s in found.structures if s.kind == "heads")
    assert heads.width == 4 and heads.consumer_group == 32 and len(heads.producers) == 3
    ops = {n.op_type for n in model.graph.node if n.name in heads.members}
    assert {"Softmax", "MatMul", "Reshape", "Transpose"} <= ops  # the core shrinks with a head
    _check_exact_named(model, "input", (4, 8, 8), batches=(1, 6), seed=2)


def _check_exact_named(model, input_name, shape, batches, seed):
    analysis, found = _discover(model, {input_name: shape})
    candidates = {c.name: c for c in analysis.candidates}
    rng = np.random.default_rng(seed)
    cuts, weights = [], {}
    for structure in found.structures:
        kept = np.sort(rng.choice(structure.width, max(1, structure.width // 2), replace=False))
        cuts.append(StructureCut(structure, kept))
        consumer = candidates[structure.consumer]
        weights[consumer.name] = masked_consumer_weight(structure, consumer, consumer.weight, kept)
    reference = apply_cuts(copy.deepcopy(model), [], candidates, weights)
    shrunk = apply_cuts(copy.deepcopy(model), cuts, candidates, weights)
    onnx.checker.check_model(shrunk)
    for batch in batches:
        x = rng.standard_normal((batch, *shape[1:])).astype(np.float32)
        run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
               .run(None, {input_name: x})[-1] for m in (reference, shrunk)]
        np.testing.assert_allclose(run[1], run[0], rtol=1e-4, atol=1e-4 * np.abs(run[0]).max())
