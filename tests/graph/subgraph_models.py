"""Small models whose weights sit inside ``If`` branches or a ``Loop`` body, for the fold tests.

The ``If`` models switch on a sample-rate-like int64 scalar input ``sr`` (``sr > 12000`` takes the
then branch), the way audio exports switch feature extractors.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.models import make_model, tensor

RNG = np.random.default_rng(7)


def _init(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32) * 0.3, name)


def _branch(name: str, nodes: list[onnx.NodeProto], output: str, shape: list,
            initializers: list[onnx.TensorProto] = ()) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [tensor(output, shape)], list(initializers))


def _sr_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("sr", TensorProto.INT64, [])


def _condition() -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    nodes = [helper.make_node("Greater", ["sr", "threshold"], ["is_wide"], name="rate_check")]
    threshold = numpy_helper.from_array(np.array(12000, dtype=np.int64), "threshold")
    return nodes, [threshold]


def matmul_switch(head: bool = True) -> onnx.ModelProto:
    """x[batch, 16] -> If(sr > 12000: MatMul-Relu-MatMul with branch-local weights, else one
    MatMul with an outer weight) -> MatMul -> y[batch, 4]; without ``head`` the If's output is
    the model's (every weight is then inside the If)."""
    cond_nodes, inits = _condition()
    then = _branch("wide", [
        helper.make_node("MatMul", ["x", "W_wide1"], ["h"], name="wide_fc1"),
        helper.make_node("Relu", ["h"], ["h_act"], name="wide_relu"),
        helper.make_node("MatMul", ["h_act", "W_wide2"], ["feat_wide"], name="wide_fc2"),
    ], "feat_wide", ["batch", 8], [_init("W_wide1", 16, 32), _init("W_wide2", 32, 8)])
    other = _branch("narrow", [
        helper.make_node("MatMul", ["x", "W_narrow"], ["h"], name="narrow_fc"),
    ], "h", ["batch", 8])
    nodes = [*cond_nodes,
             helper.make_node("If", ["is_wide"], ["feat" if head else "y"], name="rate_switch",
                              then_branch=then, else_branch=other)]
    inits += [_init("W_narrow", 16, 8)]
    if head:
        nodes.append(helper.make_node("MatMul", ["feat", "W_out"], ["y"], name="head"))
        inits.append(_init("W_out", 8, 4))
    return make_model(nodes, [tensor("x", ["batch", 16]), _sr_input()],
                      [tensor("y", ["batch", 4 if head else 8])], inits)


def conv_switch() -> onnx.ModelProto:
    """x[batch, 3, 8, 8] -> If(sr > 12000: Conv-Relu-Conv, else Conv 1x1) -> pool -> Gemm."""
    cond_nodes, inits = _condition()
    then = _branch("wide", [
        helper.make_node("Conv", ["x", "Wc1", "bc1"], ["c1"], name="wide_conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["c1_act"], name="wide_relu"),
        helper.make_node("Conv", ["c1_act", "Wc2"], ["c2"], name="wide_conv2", pads=[1] * 4),
    ], "c2", ["batch", 8, 8, 8], [_init("Wc1", 16, 3, 3, 3), _init("bc1", 16),
                                  _init("Wc2", 8, 16, 3, 3)])
    other = _branch("narrow", [
        helper.make_node("Conv", ["x", "Wc3"], ["c3"], name="narrow_conv"),
    ], "c3", ["batch", 8, 8, 8], [_init("Wc3", 8, 3, 1, 1)])
    nodes = [*cond_nodes,
             helper.make_node("If", ["is_wide"], ["feat"], name="rate_switch",
                              then_branch=then, else_branch=other),
             helper.make_node("GlobalAveragePool", ["feat"], ["pooled"], name="pool"),
             helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "W_head", "b_head"], ["y"], name="head",
                              transB=1)]
    return make_model(nodes, [tensor("x", ["batch", 3, 8, 8]), _sr_input()],
                      [tensor("y", ["batch", 4])],
                      [*inits, _init("W_head", 4, 8), _init("b_head", 4)])


def tricky_switch() -> onnx.ModelProto:
    """Two Ifs built from one template (the same local names twice), a nested If on ``sr`` inside
    the first one's then branch, and a pass-through branch reusing the templates' names."""
    cond_nodes, inits = _condition()

    def template(tag: str, nested: bool) -> onnx.GraphProto:
        nodes = [helper.make_node("MatMul", ["x", f"W_{tag}"], ["t"], name="fc"),
                 helper.make_node("Relu", ["t"], ["t_act"], name="act")]
        if nested:
            inner_then = _branch("inner_then", [
                helper.make_node("Add", ["t_act", "x"], ["u"], name="inner_add")], "u",
                ["batch", 16])
            inner_else = _branch("inner_else", [
                helper.make_node("Sub", ["t_act", "x"], ["u2"], name="inner_sub")], "u2",
                ["batch", 16])
            nodes.append(helper.make_node("If", ["is_wide"], ["t_out"], name="inner_switch",
                                          then_branch=inner_then, else_branch=inner_else))
        else:
            nodes.append(helper.make_node("Identity", ["t_act"], ["t_out"], name="out"))
        return _branch(f"wide_{tag}", nodes, "t_out", ["batch", 16])

    passthrough = _branch("pass", [helper.make_node("Identity", ["x"], ["t"], name="fc")], "t",
                          ["batch", 16])
    nodes = [*cond_nodes,
             helper.make_node("If", ["is_wide"], ["a"], name="first",
                              then_branch=template("a", nested=True), else_branch=passthrough),
             helper.make_node("Not", ["is_wide"], ["is_narrow"], name="negate"),
             helper.make_node("If", ["is_narrow"], ["b"], name="second",
                              then_branch=passthrough, else_branch=template("b", nested=False)),
             helper.make_node("Add", ["a", "b"], ["y"], name="join")]
    return make_model(nodes, [tensor("x", ["batch", 16]), _sr_input()],
                      [tensor("y", ["batch", 16])],
                      [*inits, _init("W_a", 16, 16), _init("W_b", 16, 16)])


def data_switch() -> onnx.ModelProto:
    """An If decided by the data itself (the sum of x): no pin can fold it."""
    then = _branch("pos", [helper.make_node("MatMul", ["x", "W_pos"], ["p"], name="pos_fc")],
                   "p", ["batch", 16])
    other = _branch("neg", [helper.make_node("MatMul", ["x", "W_neg"], ["n"], name="neg_fc")],
                    "n", ["batch", 16])
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], name="sum", keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["positive"], name="sign"),
             helper.make_node("If", ["positive"], ["y"], name="data_switch",
                              then_branch=then, else_branch=other)]
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    return make_model(nodes, [tensor("x", ["batch", 16])], [tensor("y", ["batch", 16])],
                      [zero, _init("W_pos", 16, 16), _init("W_neg", 16, 16)])


def loop_model() -> onnx.ModelProto:
    """x[batch, 16] -> Loop (3 iterations) of state = Relu(state · W_step) -> y."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["state_in", "W_step"], ["s"], name="step_fc"),
         helper.make_node("Relu", ["s"], ["state_out"], name="step_relu"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         tensor("state_in", ["batch", 16])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         tensor("state_out", ["batch", 16])],
    )
    nodes = [helper.make_node("Loop", ["trips", "", "x"], ["y"], name="recur", body=body)]
    trips = numpy_helper.from_array(np.array(3, dtype=np.int64), "trips")
    return make_model(nodes, [tensor("x", ["batch", 16])], [tensor("y", ["batch", 16])],
                      [trips, _init("W_step", 16, 16)])
