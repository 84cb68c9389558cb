"""--shape parsing and binding of dynamic dims."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.common.errors import UserError
from onnxprune.graph.shapes import bind_input_shapes, infer_tensor_shapes, parse_shape_specs


def test_parse_ok():
    assert parse_shape_specs(["input_ids=8x128", "x=1"]) == {"input_ids": (8, 128), "x": (1,)}


@pytest.mark.parametrize("spec", ["x", "x=", "=8x1", "x=8xa", "x=0x3", "x=-1x3", "x=8x"])
def test_parse_bad(spec):
    with pytest.raises(UserError, match="--shape"):
        parse_shape_specs([spec])


def _model() -> onnx.ModelProto:
    w = np.ones((16, 4), np.float32)
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Reshape", ["x", "s"], ["x2"], name="reshape"),
        helper.make_node("MatMul", ["x2", "w"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 16]),
         helper.make_tensor_value_info("m", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_symbols_shared_between_inputs():
    bound = bind_input_shapes(_model(), {"x": (4, 7, 16)})
    assert bound.shapes() == {"x": (4, 7, 16), "m": (4, 7)}
    assert bound.notes == ()


def test_unbound_dims_default_to_one_with_a_note():
    bound = bind_input_shapes(_model(), {})
    assert bound.shapes()["x"] == (1, 1, 16)
    assert any("batch" in note for note in bound.notes)


def test_unknown_input_name():
    with pytest.raises(UserError, match="not an input.*x, m"):
        bind_input_shapes(_model(), {"nope": (1, 2)})


def test_rank_and_fixed_dim_mismatch():
    with pytest.raises(UserError, match="rank"):
        bind_input_shapes(_model(), {"x": (4, 16)})
    with pytest.raises(UserError, match="fixed to 16"):
        bind_input_shapes(_model(), {"x": (4, 7, 15)})


def test_inferred_shapes_reach_through_reshape():
    model = _model()
    bound = bind_input_shapes(model, {"x": (2, 3, 16)})
    shapes = infer_tensor_shapes(model, bound, required=["x2", "y"])
    assert shapes["x2"] == (2, 3, 16)
    assert shapes["y"] == (2, 3, 4)
