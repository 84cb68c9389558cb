"""Tiny graphs for the latency tests (built with onnx.helper, stamped for the installed ORT)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.candidates import Candidate
from onnxprune.graph.load import stamp_ir_version
from onnxprune.layouts.base import LayoutOption


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return stamp_ir_version(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def mlp(widths=(16, 32, 32, 32, 8), batch: str | int = "batch", seed: int = 0) -> onnx.ModelProto:
    """x[batch, widths[0]] → (MatMul, Add, Relu) per layer; ORT fuses each into (Fused)Gemm."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "x"
    for i, (k, n) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        weight = rng.standard_normal((k, n)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), f"b{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"mm{i}"], name=f"fc{i}_mm"))
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"add{i}"], name=f"fc{i}_add"))
        nodes.append(helper.make_node("Relu", [f"add{i}"], [f"h{i}"], name=f"fc{i}_relu"))
        prev = f"h{i}"
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, widths[0]])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [batch, widths[-1]])],
        inits,
    )


def convnet(seed: int = 0) -> onnx.ModelProto:
    """x[batch, 4, 8, 8] → Conv(8, 3x3) → Relu → Conv(8, 3x3) → Relu (NCHWc + Conv/Relu fusion)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, channels = "x", 4
    for i in range(2):
        w = rng.standard_normal((8, channels, 3, 3)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"cw{i}"),
            numpy_helper.from_array(np.zeros(8, np.float32), f"cb{i}"),
        ]
        nodes.append(
            helper.make_node(
                "Conv", [prev, f"cw{i}", f"cb{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]
            )
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        prev, channels = f"r{i}", 8
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["batch", 8, 8, 8])],
        inits,
    )


def dense_isolated(candidate: Candidate, option: LayoutOption, site_index: int) -> onnx.ModelProto:
    """Stand-in for ``layouts.isolate``: the MatMul(+bias) node alone, whatever the option."""
    site = candidate.sites[site_index]
    inits = [numpy_helper.from_array(candidate.weight, "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y" if candidate.bias is None else "mm"])]
    if candidate.bias is not None:
        inits.append(numpy_helper.from_array(candidate.bias, "b"))
        nodes.append(helper.make_node("Add", ["mm", "b"], ["y"]))
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(site.input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(site.output_shape))],
        inits,
    )


def unrolled_rnn(steps: int = 6, hidden: int = 16, features: int = 8,
                 seed: int = 0) -> onnx.ModelProto:
    """An RNN unrolled over ``steps`` as exporters write it: two weights shared by every step.

    x [batch, steps, features]; h_t = tanh(x_t · W_x + h_{t−1} · W_h + b); y = h_last. Each step
    has its own MatMul on W_x (from a Gather of the step) and on W_h, so W_x and W_h have
    ``steps`` sites each (``steps − 1`` for W_h: h_0 is zero and its MatMul is left out).
    """
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((features, hidden)).astype(np.float32), "wx"),
        numpy_helper.from_array(rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.3,
                                "wh"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b"),
    ]
    nodes, h = [], None
    for t in range(steps):
        inits.append(numpy_helper.from_array(np.array(t, np.int64), f"t{t}"))
        nodes.append(helper.make_node("Gather", ["x", f"t{t}"], [f"x{t}"], name=f"step{t}", axis=1))
        nodes.append(helper.make_node("MatMul", [f"x{t}", "wx"], [f"ix{t}"], name=f"in{t}"))
        pre = f"ix{t}"
        if h is not None:
            nodes.append(helper.make_node("MatMul", [h, "wh"], [f"hh{t}"], name=f"rec{t}"))
            nodes.append(helper.make_node("Add", [pre, f"hh{t}"], [f"s{t}"], name=f"sum{t}"))
            pre = f"s{t}"
        nodes.append(helper.make_node("Add", [pre, "b"], [f"a{t}"], name=f"bias{t}"))
        nodes.append(helper.make_node("Tanh", [f"a{t}"], [f"h{t}"], name=f"tanh{t}"))
        h = f"h{t}"
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", steps, features])],
        [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["batch", hidden])],
        inits,
    )
