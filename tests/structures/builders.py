"""Small graphs with channel structures, built from a vocabulary of pass-through ops.

``ffn_model`` chains MatMul → [ops] → MatMul; ``conv_chain`` chains Conv → [ops] → Conv. The
``ops`` are names from :data:`MATMUL_OPS` / :data:`CONV_OPS`, so property tests can draw them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tests.models import init, make_model, tensor

MATMUL_OPS = ("bias", "relu", "gelu", "silu", "scale", "sigmoid", "tanh", "clip")
CONV_OPS = ("bn", "relu", "depthwise", "clip", "hardswish", "scale", "bias", "maxpool", "pad")


class _Chain:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        value = np.asarray(value)
        self.inits.append(numpy_helper.from_array(value, name) if value.dtype == np.int64
                          else init(name, value))
        return name

    def node(self, op: str, inputs: Sequence[str], **attrs) -> str:
        out = self.name(op.lower() + "_out")
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=self.name(op), **attrs))
        return out

    def ops(self, x: str, kinds: Sequence[str], width: int, conv: bool) -> str:
        per_channel = [1, width, 1, 1] if conv else [width]
        for kind in kinds:
            if kind == "bias":
                x = self.node("Add", [x, self.const(self.rng.standard_normal(per_channel))])
            elif kind == "scale":
                x = self.node("Mul", [x, self.const(self.rng.uniform(0.5, 2, per_channel))])
            elif kind == "relu":
                x = self.node("Relu", [x])
            elif kind == "sigmoid":
                x = self.node("Sigmoid", [x])
            elif kind == "tanh":
                x = self.node("Tanh", [x])
            elif kind == "hardswish":
                x = self.node("HardSwish", [x])
            elif kind == "clip":
                x = self.node("Clip", [x, self.const(np.array(0.0)), self.const(np.array(6.0))])
            elif kind == "silu":
                x = self.node("Mul", [x, self.node("Sigmoid", [x])])
            elif kind == "gelu":  # the torch export: x/√2 → Erf → +1 → ·x → ·0.5
                erf = self.node("Erf", [self.node("Div", [x, self.const(np.array(1.4142135))])])
                plus = self.node("Add", [erf, self.const(np.array(1.0))])
                x = self.node("Mul", [self.node("Mul", [x, plus]), self.const(np.array(0.5))])
            elif kind == "bn":
                x = self.node("BatchNormalization", [
                    x, self.const(self.rng.uniform(0.5, 2, width)),
                    self.const(self.rng.standard_normal(width)),
                    self.const(self.rng.standard_normal(width) * 0.1),
                    self.const(self.rng.uniform(0.5, 2, width))])
            elif kind == "depthwise":
                x = self.node("Conv", [x, self.const(self.rng.standard_normal((width, 1, 3, 3))),
                                       self.const(self.rng.standard_normal(width))],
                              group=width, pads=[1, 1, 1, 1])
            elif kind == "maxpool":
                x = self.node("MaxPool", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
            elif kind == "pad":
                pads = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)
                x = self.node("Pad", [x, self.const(pads, "p")])
            else:
                raise ValueError(kind)
        return x


def ffn_model(width: int, ops: Sequence[str], seed: int = 0, d_in: int = 12,
              d_out: int = 10, residual: bool = False) -> onnx.ModelProto:
    """x [batch, seq, d_in] → MatMul(d_in→width) → ops → MatMul(width→d_out) → y.

    With ``residual`` (d_out = d_in): ``y = x + FFN(x)`` and a Concat of ``x`` with ``y`` as a
    second output — the residual and the Concat block the down-projection's own channels but
    must leave the FFN structure inside exact.
    """
    rng = np.random.default_rng(seed)
    chain = _Chain(rng)
    d_out = d_in if residual else d_out
    h = chain.node("MatMul", ["x", chain.const(rng.standard_normal((d_in, width)), "w_up")])
    h = chain.ops(h, ops, width, conv=False)
    down = "f" if residual else "y"
    chain.nodes.append(helper.make_node(
        "MatMul", [h, chain.const(rng.standard_normal((width, d_out)), "w_down")], [down],
        name="down"))
    outputs = [tensor("y", ["batch", "seq", d_out])]
    if residual:
        chain.nodes.append(helper.make_node("Add", ["x", "f"], ["y"], name="residual"))
        chain.nodes.append(helper.make_node("Concat", ["x", "y"], ["both"], name="concat",
                                            axis=-1))
        outputs.append(tensor("both", ["batch", "seq", 2 * d_in]))
    return make_model(chain.nodes, [tensor("x", ["batch", "seq", d_in])], outputs, chain.inits)


def conv_chain(width: int, ops: Sequence[str], seed: int = 0, flatten: bool = False,
               c_in: int = 3, c_out: int = 5, size: int = 6) -> onnx.ModelProto:
    """x [batch, c_in, s, s] → Conv(→width) → ops → Conv(width→c_out) or Flatten → Gemm → y."""
    rng = np.random.default_rng(seed)
    chain = _Chain(rng)
    h = chain.node("Conv", ["x", chain.const(rng.standard_normal((width, c_in, 3, 3)), "w_a"),
                            chain.const(rng.standard_normal(width), "b_a")], pads=[1, 1, 1, 1])
    h = chain.ops(h, ops, width, conv=True)
    if flatten:
        flat = chain.node("Flatten", [h], axis=1)
        padded = size + 2 * ops.count("pad")
        features = width * padded * padded
        chain.nodes.append(helper.make_node(
            "Gemm", [flat, chain.const(rng.standard_normal((c_out, features)), "w_fc"),
                     chain.const(rng.standard_normal(c_out), "b_fc")], ["y"], name="fc",
            transB=1))
        out = tensor("y", ["batch", c_out])
    else:
        chain.nodes.append(helper.make_node(
            "Conv", [h, chain.const(rng.standard_normal((c_out, width, 3, 3)), "w_b")], ["y"],
            name="conv_b", pads=[1, 1, 1, 1]))
        out = tensor("y", ["batch", c_out, "h", "w"])
    return make_model(chain.nodes, [tensor("x", ["batch", c_in, size, size])], [out], chain.inits)


BLOCKS = ("bottleneck", "downsample", "single", "se")
"""Residual blocks :func:`residual_net` draws from (see there)."""
MOVING_BLOCKS = ("c2f", "c2f-plain", "sppf", "concat", "split-add")
"""Blocks where Concat and Split move the channels (:func:`residual_net`)."""
BLOCK_OPS = tuple(op for op in CONV_OPS if op != "pad")
"""Ops inside a residual block: any that keep the spatial size (the Add needs it)."""


def residual_net(width: int, blocks: Sequence[str], ops: Sequence[str] = ("relu",),
                 seed: int = 0, c_in: int = 3, hidden: int = 6, size: int = 6,
                 ) -> onnx.ModelProto:
    """x [batch, c_in, s, s] → stem Conv(→width) → blocks → Conv(width→5) → y: a ResNet's shape.

    Blocks (each keeps the stream's ``width``):
      * "bottleneck": ``s + Conv3x3(ops(Conv1x1(s)))`` — a residual Add of the stream and a new
        producer;
      * "downsample": ``Conv3x3(ops(Conv1x1(s))) + Conv1x1(s)`` — a ResNet's projection shortcut:
        the old stream has two consumers, the new one two producers;
      * "single": ``s + Conv1x1(s)`` — one Conv both reads and writes the stream;
      * "se": ``s · Sigmoid(Conv(Relu(Conv(GlobalAveragePool(s)))))`` — squeeze-excitation, a
        Mul of two computed operands;
      * "c2f" / "c2f-plain": YOLOv8's C2f, ``a = Conv(s)`` (2·hidden), ``y0, y1 = Split(a)``,
        ``m = Conv3x3(ops(Conv1x1(y1)))`` (+ ``y1`` in "c2f"), ``s = Relu(Conv(Concat(y0, y1,
        m)))``;
      * "sppf": ``a = Conv(s)``, two stride-1 MaxPools, ``s = Conv(Concat(a, p1, p2))``;
      * "concat": ``s = Conv(Concat(Conv(s), Relu(Conv(s))))`` — two producers side by side;
      * "split-add": ``y0, y1 = Split(Conv(s))`` (2·width), ``s = s + y0 + Conv(y1)``: the
        stream meets a Split piece, so the group is followed back through the Split.
    ``ops`` run after every block's first conv (names from :data:`BLOCK_OPS`, at width ``hidden``).
    """
    rng = np.random.default_rng(seed)
    chain = _Chain(rng)

    def conv(x: str, c_out: int, c_in: int, k: int = 1) -> str:
        weight = chain.const(rng.standard_normal((c_out, c_in, k, k)) / np.sqrt(c_in * k * k),
                             "w")
        pads = [k // 2] * 4
        return chain.node("Conv", [x, weight, chain.const(rng.standard_normal(c_out) * 0.1)],
                          pads=pads)

    def split(x: str, sizes: list[int]) -> list[str]:
        outs = [chain.name("piece") for _ in sizes]
        chain.nodes.append(helper.make_node(
            "Split", [x, chain.const(np.asarray(sizes, dtype=np.int64), "sizes")], outs,
            name=chain.name("Split"), axis=1))
        return outs

    def concat(parts: list[str]) -> str:
        return chain.node("Concat", parts, axis=1)

    s = chain.ops(conv("x", width, c_in, 3), ["bn", "relu"], width, conv=True)
    for block in blocks:
        if block in ("c2f", "c2f-plain"):
            y0, y1 = split(chain.node("Relu", [conv(s, 2 * hidden, width)]), [hidden, hidden])
            m = conv(chain.ops(conv(y1, hidden, hidden), ops, hidden, conv=True), hidden, hidden,
                     3)
            if block == "c2f":
                m = chain.node("Add", [y1, m])
            s = chain.node("Relu", [conv(concat([y0, y1, m]), width, 3 * hidden)])
            continue
        if block == "sppf":
            a = conv(s, hidden, width)
            p1 = chain.node("MaxPool", [a], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
            p2 = chain.node("MaxPool", [p1], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
            s = conv(concat([a, p1, p2]), width, 3 * hidden)
            continue
        if block == "concat":
            left = conv(s, hidden, width)
            right = chain.node("Relu", [conv(s, hidden, width, 3)])
            s = conv(concat([left, right]), width, 2 * hidden)
            continue
        if block == "split-add":
            y0, y1 = split(conv(s, 2 * width, width), [width, width])
            s = chain.node("Add", [chain.node("Add", [s, y0]), conv(y1, width, width)])
            continue
        if block == "se":
            squeeze = chain.node("Relu", [conv(chain.node("GlobalAveragePool", [s]), hidden,
                                               width)])
            s = chain.node("Mul", [s, chain.node("Sigmoid", [conv(squeeze, width, hidden)])])
            continue
        if block == "single":
            s = chain.node("Add", [s, conv(s, width, width)])
            continue
        inner = conv(chain.ops(conv(s, hidden, width), ops, hidden, conv=True), width, hidden, 3)
        shortcut = conv(s, width, width) if block == "downsample" else s
        s = chain.node("Relu", [chain.node("Add", [inner, shortcut])])
    chain.nodes.append(helper.make_node(
        "Conv", [s, chain.const(rng.standard_normal((5, width, 1, 1)), "w_head")], ["y"],
        name="head"))
    return make_model(chain.nodes, [tensor("x", ["batch", c_in, size, size])],
                      [tensor("y", ["batch", 5, size, size])], chain.inits)


def residual_mlp(width: int, blocks: int, seed: int = 0, d_in: int = 12, hidden: int = 10,
                 norm: bool = False) -> onnx.ModelProto:
    """x [batch, seq, d_in] → MatMul(→width) → ``blocks`` × (s + FFN(s)) → MatMul(→10) → y: a
    transformer's residual stream without its normalizations (``norm``: a LayerNorm after every
    Add, as in post-LN encoders, which must block the stream)."""
    rng = np.random.default_rng(seed)
    chain = _Chain(rng)
    s = chain.node("MatMul", ["x", chain.const(rng.standard_normal((d_in, width)), "w")])
    for _ in range(blocks):
        up = chain.node("MatMul", [s, chain.const(rng.standard_normal((width, hidden)), "w")])
        down = chain.node("MatMul", [chain.node("Relu", [up]),
                                     chain.const(rng.standard_normal((hidden, width)), "w")])
        s = chain.node("Add", [s, down])
        if norm:
            s = chain.node("LayerNormalization", [s, chain.const(np.ones(width)),
                                                  chain.const(np.zeros(width))], axis=-1)
    chain.nodes.append(helper.make_node(
        "MatMul", [s, chain.const(rng.standard_normal((width, 10)), "w_out")], ["y"], name="out"))
    return make_model(chain.nodes, [tensor("x", ["batch", "seq", d_in])],
                      [tensor("y", ["batch", "seq", 10])], chain.inits)
