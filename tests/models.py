"""Tiny hand-built ONNX graphs for tests (like onnx-graphsurgeon's ``tests/onnx_models.py``).

Every builder takes the weight in the orientation it is STORED in the model, so a test can build
the same graph twice: with the original weight, and with the pruned one (the masked-dense
reference). Inputs are named ``x`` with symbolic leading dims (``batch``, ``seq``); the output is
``y``. Node names are set; the IR version is one the installed ORT reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.load import stamp_ir_version

OPSET = 17


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = OPSET,
) -> onnx.ModelProto:
    """A checked model from nodes, inputs, outputs and initializers."""
    graph = helper.make_graph(list(nodes), "test", list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model = stamp_ir_version(model)
    onnx.checker.check_model(model)
    return model


def tensor(name: str, shape: Sequence[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def matmul_model(
    weight: np.ndarray,
    lead: Sequence[int | str] = ("batch",),
    bias: np.ndarray | None = None,
    weight_transposed: bool = False,
    opset: int = OPSET,
) -> onnx.ModelProto:
    """``y = x·W (+ bias as a separate Add)``, x: [*lead, K].

    Args:
        weight: stored weight, [K, N] (or [N, K] with ``weight_transposed``: read via Transpose).
        lead: leading dims of x (symbolic names or sizes).
        bias: optional [N] bias added by an Add node after the MatMul.
        weight_transposed: store W as [N, K] behind a Transpose node.
        opset: default-domain opset.
    """
    k_dim, n_dim = weight.shape[::-1] if weight_transposed else weight.shape
    nodes, inits = [], [init("w", weight)]
    w_name = "w"
    if weight_transposed:
        nodes.append(helper.make_node("Transpose", ["w"], ["w_t"], name="w_transpose", perm=[1, 0]))
        w_name = "w_t"
    mm_out = "y" if bias is None else "mm"
    nodes.append(helper.make_node("MatMul", ["x", w_name], [mm_out], name="fc"))
    if bias is not None:
        inits.append(init("b", bias))
        nodes.append(helper.make_node("Add", ["mm", "b"], ["y"], name="fc_bias"))
    return make_model(
        nodes, [tensor("x", [*lead, k_dim])], [tensor("y", [*lead, n_dim])], inits, opset
    )


def gemm_model(
    weight: np.ndarray,
    c: np.ndarray | None = None,
    trans_a: int = 0,
    trans_b: int = 0,
    alpha: float = 1.0,
    beta: float = 1.0,
    opset: int = OPSET,
) -> onnx.ModelProto:
    """``y = alpha·A'·B' + beta·C``; A = x is [batch, K] ([K, batch] with ``trans_a``).

    Args:
        weight: stored B, [K, N] ([N, K] with ``trans_b``).
        c: optional C ([N], [1, N] or a scalar-like [1]).
    """
    k_dim, n_dim = weight.shape[::-1] if trans_b else weight.shape
    inputs, inits = ["x", "w"], [init("w", weight)]
    if c is not None:
        inits.append(init("c", c))
        inputs.append("c")
    node = helper.make_node(
        "Gemm", inputs, ["y"], name="gemm", transA=trans_a, transB=trans_b, alpha=alpha, beta=beta
    )
    x_shape = [k_dim, "batch"] if trans_a else ["batch", k_dim]
    return make_model([node], [tensor("x", x_shape)], [tensor("y", ["batch", n_dim])], inits, opset)


def conv_model(
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    hw: tuple[int, int] = (8, 8),
    opset: int = OPSET,
) -> onnx.ModelProto:
    """``y = Conv(x, W, bias)``, x: [batch, C, H, W], W: [O, C, kh, kw], group 1.

    ``pads`` are ONNX's [top, left, bottom, right].
    """
    inputs, inits = ["x", "w"], [init("w", weight)]
    if bias is not None:
        inits.append(init("b", bias))
        inputs.append("b")
    node = helper.make_node(
        "Conv",
        inputs,
        ["y"],
        name="conv",
        kernel_shape=list(weight.shape[2:]),
        strides=list(strides),
        pads=list(pads),
        dilations=list(dilations),
    )
    return make_model(
        [node],
        [tensor("x", ["batch", weight.shape[1], *hw])],
        [tensor("y", ["batch", weight.shape[0], "out_h", "out_w"])],
        inits,
        opset,
    )


def shared_weight_model(weight: np.ndarray, opset: int = OPSET) -> onnx.ModelProto:
    """Two MatMuls sharing W[K, N]: ``y = x1·W + x2·W``, x1 [batch, K], x2 [batch, 3, K]."""
    k_dim, n_dim = weight.shape
    nodes = [
        helper.make_node("MatMul", ["x1", "w"], ["m1"], name="fc_a"),
        helper.make_node("MatMul", ["x2", "w"], ["m2"], name="fc_b"),
        helper.make_node("Unsqueeze", ["m1", "axis1"], ["m1u"], name="unsq"),
        helper.make_node("Add", ["m1u", "m2"], ["y"], name="sum"),
    ]
    inits = [init("w", weight), numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    return make_model(
        nodes,
        [tensor("x1", ["batch", k_dim]), tensor("x2", ["batch", 3, k_dim])],
        [tensor("y", ["batch", 3, n_dim])],
        inits,
        opset,
    )


def two_layer_model(
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    activation: str | None = "Relu",
    residual: bool = False,
    b2: np.ndarray | None = None,
    opset: int = OPSET,
) -> onnx.ModelProto:
    """``h = act(x·W1 + b1); y = h·W2 (+ b2) (+ h when residual)``; x: [batch, K].

    ``activation`` is an ONNX unary op name, None, or "Gelu5" (GELU as five ops, as exported).

    The first layer's outputs feed the second MatMul through Add and an optional activation, the
    path :func:`~onnxprune.graph.fold_restores.fold_channel_restores` shrinks; ``residual`` adds a
    second consumer of ``h`` (needs W2 square).
    """
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
        helper.make_node("Add", ["m1", "b1"], ["a1"], name="fc1_bias"),
    ]
    hidden = "a1"
    inits = [init("w1", w1), init("b1", b1), init("w2", w2)]
    if activation == "Gelu5":  # GELU as torch exports it: x·0.5·(1 + erf(x/√2)), five ops
        inits += [
            init("sqrt2", np.array(2**0.5)),
            init("one", np.array(1.0)),
            init("half", np.array(0.5)),
        ]
        nodes += [
            helper.make_node("Div", ["a1", "sqrt2"], ["g1"], name="gelu_div"),
            helper.make_node("Erf", ["g1"], ["g2"], name="gelu_erf"),
            helper.make_node("Add", ["g2", "one"], ["g3"], name="gelu_add"),
            helper.make_node("Mul", ["a1", "g3"], ["g4"], name="gelu_mul"),
            helper.make_node("Mul", ["g4", "half"], ["h"], name="gelu_half"),
        ]
        hidden = "h"
    elif activation is not None:
        nodes.append(helper.make_node(activation, ["a1"], ["h"], name="act"))
        hidden = "h"
    out = "m2"
    nodes.append(helper.make_node("MatMul", [hidden, "w2"], ["m2"], name="fc2"))
    if b2 is not None:
        inits.append(init("b2", b2))
        nodes.append(helper.make_node("Add", ["m2", "b2"], ["o2"], name="fc2_bias"))
        out = "o2"
    if residual:
        nodes.append(helper.make_node("Add", [out, hidden], ["r"], name="residual"))
        out = "r"
    nodes.append(helper.make_node("Identity", [out], ["y"], name="out"))
    return make_model(
        nodes,
        [tensor("x", ["batch", w1.shape[0]])],
        [tensor("y", ["batch", w2.shape[1]])],
        inits,
        opset,
    )


def conv_chain_model(
    w1: np.ndarray,
    b1: np.ndarray | None,
    w2: np.ndarray,
    b2: np.ndarray | None = None,
    activation: str | None = "Relu",
    pads2: Sequence[int] = (0, 0, 0, 0),
    hw: tuple[int, int] = (6, 6),
    opset: int = OPSET,
) -> onnx.ModelProto:
    """``y = Conv2(act(Conv1(x, W1, b1)), W2, b2)`` with 'same' padding on Conv1."""
    inits = [init("w1", w1), init("w2", w2)]
    in1, in2 = ["x", "w1"], ["h", "w2"]
    if b1 is not None:
        inits.append(init("b1", b1))
        in1.append("b1")
    if b2 is not None:
        inits.append(init("b2", b2))
        in2.append("b2")
    pad = w1.shape[2] // 2
    nodes = [helper.make_node("Conv", in1, ["c1"], name="conv1", pads=[pad] * 4)]
    if activation is None:
        in2[0] = "c1"
    else:
        nodes.append(helper.make_node(activation, ["c1"], ["h"], name="act"))
    nodes.append(helper.make_node("Conv", in2, ["y"], name="conv2", pads=list(pads2)))
    return make_model(
        nodes,
        [tensor("x", ["batch", w1.shape[1], *hw])],
        [tensor("y", ["batch", w2.shape[0], "h", "w"])],
        inits,
        opset,
    )
