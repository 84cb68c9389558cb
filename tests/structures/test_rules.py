"""The op → channel mapping table, one rule at a time, on a one-node graph each."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.structures.graphview import Blocked, GraphView
from onnxprune.structures.rules import BLOCKING, RULES, Walk, step

WIDTH = 8


def _reader(op: str, inputs: list[str], initializers=(), **attrs) -> tuple[GraphView, Walk,
                                                                          onnx.NodeProto]:
    """A graph where ``x`` [2, 8] carries the channels on axis 1 and one ``op`` node reads it."""
    node = helper.make_node(op, inputs, ["y"], name="reader", **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=list(initializers))
    model = helper.make_model(graph)
    walk = Walk(WIDTH)
    walk.tensors["x"] = (1, 1)
    out_shape = (WIDTH, 2) if op == "Transpose" else (2, WIDTH)
    return GraphView(model, {"x": (2, WIDTH), "y": out_shape}), walk, node


def test_a_unary_op_carries_the_channels_on_the_same_axis():
    graph, walk, node = _reader("Relu", ["x"])
    assert step(graph, walk, "x", node, {}, {}) == ["y"]
    assert walk.tensors["y"] == (1, 1) and "reader" in walk.members


def test_a_per_channel_constant_shrinks_with_the_channels():
    scale = numpy_helper.from_array(np.arange(WIDTH, dtype=np.float32).reshape(1, WIDTH), "s")
    graph, walk, node = _reader("Mul", ["x", "s"], [scale])
    assert step(graph, walk, "x", node, {}, {}) == ["y"]
    assert [(c.node, c.input_index, c.axis) for c in walk.slices] == [("reader", 1, 1)]


def test_a_transpose_moves_the_axis():
    graph, walk, node = _reader("Transpose", ["x"], perm=[1, 0])
    assert step(graph, walk, "x", node, {}, {}) == ["y"]
    assert walk.tensors["y"][0] == 0


@pytest.mark.parametrize("op", sorted(BLOCKING))
def test_an_op_that_mixes_channels_blocks_with_its_reason(op):
    graph, walk, node = _reader(op, ["x", "x"] if op == "Concat" else ["x"],
                                **({"axis": 1} if op in ("Concat", "Split") else {}))
    with pytest.raises(Blocked, match=BLOCKING[op]):
        step(graph, walk, "x", node, {}, {})


def test_an_op_no_rule_knows_blocks_and_says_so():
    assert "Hardmax" not in RULES and "Hardmax" not in BLOCKING
    graph, walk, node = _reader("Hardmax", ["x"])
    with pytest.raises(Blocked, match="not known to carry channels"):
        step(graph, walk, "x", node, {}, {})


def test_a_custom_domain_op_blocks():
    graph, walk, node = _reader("Relu", ["x"])
    node.domain = "com.example"
    with pytest.raises(Blocked, match="custom op"):
        step(graph, walk, "x", node, {}, {})
