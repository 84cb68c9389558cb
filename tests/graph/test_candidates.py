"""Discovery of prunable nodes on hand-built graphs, one per weight source and skip reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.candidates import ensure_node_names, find_candidates
from onnxprune.graph.shapes import bind_input_shapes

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _x(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _analyse(model: onnx.ModelProto, shapes: dict | None = None):
    model = ensure_node_names(model)
    return find_candidates(model, bind_input_shapes(model, shapes or {}))


def test_initializer_weight_matmul_3d_activation():
    w = _w(16, 24)
    model = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [_x("x", ["batch", 5, 16])], [_x("y", ["batch", 5, 24])],
        [numpy_helper.from_array(w, "w")],
    )
    analysis = _analyse(model, {"x": (3, 5, 16)})
    (cand,) = analysis.candidates
    assert cand.op == "MatMul" and cand.name == "mm"
    np.testing.assert_array_equal(cand.weight, w)
    assert cand.weight_source == "w" and cand.weight_via == ()
    assert cand.sites[0].input_shape == (3, 5, 16)
    assert cand.macs == 3 * 5 * 16 * 24
    assert analysis.share(cand) == pytest.approx(1.0)


def test_constant_node_weight():
    w = _w(8, 4)
    model = _model(
        [
            helper.make_node("Constant", [], ["w"], name="c", value=numpy_helper.from_array(w)),
            helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        ],
        [_x("x", [2, 8])], [_x("y", [2, 4])],
    )
    (cand,) = _analyse(model).candidates
    np.testing.assert_array_equal(cand.weight, w)
    assert cand.weight_source == "w"


def test_transposed_and_cast_weight_is_canonicalized():
    stored = _w(4, 8)  # [N, K], transposed into [K, N] in the graph
    model = _model(
        [
            helper.make_node("Transpose", ["w_t"], ["w_k"], name="tr", perm=[1, 0]),
            helper.make_node("Identity", ["w_k"], ["w_id"], name="id"),
            helper.make_node("Cast", ["w_id"], ["w"], name="cast", to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        ],
        [_x("x", [2, 8])], [_x("y", [2, 4])],
        [numpy_helper.from_array(stored, "w_t")],
    )
    (cand,) = _analyse(model).candidates
    np.testing.assert_array_equal(cand.weight, stored.T)
    assert cand.weight_source == "w_t"
    assert cand.weight_via == ("Transpose", "Identity", "Cast")


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("with_bias", [True, False])
def test_gemm_attributes_fold_into_canonical_weight(trans_a, trans_b, with_bias):
    k, n, m = 6, 5, 3
    w = _w(n, k) if trans_b else _w(k, n)
    c = _w(n)
    inputs = ["x", "w"] + (["c"] if with_bias else [])
    node = helper.make_node("Gemm", inputs, ["y"], name="gemm", alpha=0.5, beta=2.0,
                            transA=trans_a, transB=trans_b)
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(c, "c")] if with_bias
                                                 else [])
    model = _model([node], [_x("x", [k, m] if trans_a else [m, k])], [_x("y", [m, n])], inits)
    (cand,) = _analyse(model).candidates
    expected = (w.T if trans_b else w) * 0.5
    np.testing.assert_allclose(cand.weight, expected, rtol=1e-6)
    assert cand.attrs["trans_a"] == trans_a
    if with_bias:
        np.testing.assert_allclose(cand.bias, 2.0 * c, rtol=1e-6)
    else:
        assert cand.bias is None
    assert cand.macs == m * n * k


def test_shared_weight_forms_one_group():
    w = _w(8, 8)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu"),
        helper.make_node("MatMul", ["r1", "w"], ["y"], name="mm2"),
    ]
    model = _model(nodes, [_x("x", [4, 8])], [_x("y", [4, 8])], [numpy_helper.from_array(w, "w")])
    (cand,) = _analyse(model).candidates
    assert cand.node_names == ("mm1", "mm2")
    assert cand.macs == 2 * 4 * 8 * 8


def test_weight_inside_if_branch_is_reported_not_pruned():
    w = _w(8, 4)
    branch_nodes = [helper.make_node("MatMul", ["x", "w_then"], ["y_then"], name="mm_in_if")]
    then_graph = helper.make_graph(
        branch_nodes, "then", [], [_x("y_then", [2, 4])],
        initializer=[numpy_helper.from_array(w, "w_then")],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["y_else"], name="zeros",
                          value=numpy_helper.from_array(np.zeros((2, 4), np.float32)))],
        "else", [], [_x("y_else", [2, 4])],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    model = _model(
        [helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_graph,
                          else_branch=else_graph)],
        [_x("x", [2, 8])], [_x("y", [2, 4])], [cond],
    )
    analysis = _analyse(model)
    assert analysis.candidates == ()
    (skip,) = analysis.skipped
    assert skip.node == "mm_in_if" and "If" in skip.reason


def test_int8_matmulinteger_is_reported_as_quantized():
    w = RNG.integers(-5, 5, (8, 4)).astype(np.int8)
    model = _model(
        [helper.make_node("MatMulInteger", ["x", "w"], ["y"], name="mmi")],
        [helper.make_tensor_value_info("x", TensorProto.INT8, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [2, 4])],
        [numpy_helper.from_array(w, "w")],
    )
    analysis = _analyse(model)
    assert analysis.candidates == ()
    (skip,) = analysis.skipped
    assert skip.op == "MatMulInteger" and "quantized" in skip.reason


def test_runtime_weight_and_depthwise_conv_are_skipped_with_reasons():
    dw = _w(4, 1, 3, 3)
    nodes = [
        helper.make_node("MatMul", ["x", "x_t"], ["scores"], name="qk"),
        helper.make_node("Conv", ["img", "dw"], ["dwo"], name="dwconv", group=4, pads=[1, 1, 1, 1]),
    ]
    model = _model(
        nodes, [_x("x", [3, 3]), _x("x_t", [3, 3]), _x("img", [1, 4, 6, 6])],
        [_x("scores", [3, 3]), _x("dwo", [1, 4, 6, 6])], [numpy_helper.from_array(dw, "dw")],
    )
    analysis = _analyse(model)
    assert analysis.candidates == ()
    reasons = {s.node: s.reason for s in analysis.skipped}
    assert "run time" in reasons["qk"]
    assert "depthwise" in reasons["dwconv"]


def test_conv_auto_pad_is_resolved_to_explicit_pads():
    w = _w(8, 3, 3, 3)
    model = _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", auto_pad="SAME_UPPER",
                          strides=[2, 2])],
        [_x("x", ["n", 3, 9, 9])], [_x("y", ["n", 8, 5, 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(_w(8), "b")],
    )
    analysis = _analyse(model, {"x": (2, 3, 9, 9)})
    (cand,) = analysis.candidates
    assert cand.attrs["pads"] == (1, 1, 1, 1)
    assert cand.attrs["strides"] == (2, 2)
    assert cand.sites[0].output_shape == (2, 8, 5, 5)
    assert cand.macs == 2 * 8 * 5 * 5 * 3 * 3 * 3
    assert cand.reduction_dim == 27 and cand.output_dim == 8


def test_unnamed_nodes_get_unique_names():
    w = _w(4, 4)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("MatMul", ["h", "w"],
                                                                              ["y"])]
    model = _model(nodes, [_x("x", [1, 4])], [_x("y", [1, 4])], [numpy_helper.from_array(w, "w")])
    ensure_node_names(model)
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == 2


SHIPPED = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize(("name", "shape", "ops", "skipped"), [
    ("digits_mlp", (4, 64), {"MatMul": 3}, 0),
    ("digits_cnn", (4, 1, 8, 8), {"Conv": 3, "Gemm": 2}, 0),
    # 13 weight MatMuls + the Gemm head; QKᵀ and attention·V (2 per layer) multiply activations.
    ("digits_transformer", (4, 8, 8), {"MatMul": 13, "Gemm": 1}, 4),
])
def test_discovery_on_shipped_models(name, shape, ops, skipped):
    from collections import Counter

    from onnxprune.graph.load import load_model

    model = ensure_node_names(load_model(SHIPPED / f"{name}.onnx"))
    analysis = find_candidates(model, bind_input_shapes(model, {"input": shape}))
    assert Counter(c.op for c in analysis.candidates) == ops
    assert len(analysis.skipped) == skipped
    assert all("activation x activation" in s.reason for s in analysis.skipped)
    assert all(c.sites[0].input_shape[0] == shape[0] for c in analysis.candidates)
    assert sum(analysis.share(c) for c in analysis.candidates) > 0.95
