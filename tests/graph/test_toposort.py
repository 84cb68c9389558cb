"""Sorting nodes on load: never stricter than ONNX Runtime, never reordering a sorted graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.load import load_model
from onnxprune.graph.toposort import is_sorted, toposort_graph


def _chain() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["a"], name="mm2"),
        helper.make_node("MatMul", ["x", "w3"], ["b"], name="side"),
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), f"w{i}")
             for i in (1, 2, 3)]
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _shuffled() -> onnx.ModelProto:
    model = _chain()
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend([nodes[i] for i in (4, 2, 1, 3, 0)])
    return model


def test_sorted_graph_is_left_alone():
    model = _chain()
    before = model.SerializeToString()
    assert is_sorted(model.graph)
    assert toposort_graph(model.graph) is False
    assert model.SerializeToString() == before


def test_shuffled_graph_is_sorted_stably():
    model = _shuffled()
    assert not is_sorted(model.graph)
    assert toposort_graph(model.graph) is True
    assert is_sorted(model.graph)
    # Kahn's sort with the original position as priority: deterministic, dependencies first.
    assert [n.name for n in model.graph.node] == ["side", "mm1", "relu", "mm2", "add"]
    onnx.checker.check_model(model)


def test_loader_accepts_what_ort_runs(tmp_path):
    """onnx.checker refuses the shuffled graph; ORT runs it; so load_model must accept it."""
    model = _shuffled()
    path = tmp_path / "shuffled.onnx"
    onnx.save(model, str(path))
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    loaded = load_model(path)
    assert is_sorted(loaded.graph)
    got = ort.InferenceSession(loaded.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


def test_subgraph_outer_scope_reads_count_as_dependencies():
    """An If body reading an outer tensor must come after that tensor's producer."""
    then_graph = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["t"], name="then_id")], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 8])])
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["h"], ["e"], name="else_neg")], "else", [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 8])])
    nodes = [
        helper.make_node("If", ["c"], ["y"], name="if", then_branch=then_graph,
                         else_branch=else_graph),
        helper.make_node("Relu", ["x"], ["h"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])])
    assert not is_sorted(graph)
    assert toposort_graph(graph) is True
    assert [n.name for n in graph.node] == ["relu", "if"]
