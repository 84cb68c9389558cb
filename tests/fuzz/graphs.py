"""Random valid ONNX graphs for the fuzzer, built from blocks on one running "stream" tensor.

A recipe is a start (an image, a sequence, a flat vector, or int64 tokens through an embedding)
and a list of block picks; each pick selects one of the blocks that fit the stream's current rank
(see :data:`BLOCKS`), so every recipe builds a valid graph and hypothesis can shrink a failing
one block by block. The blocks are the shapes exporters write: chains through BatchNorm,
activations and depthwise convs, residual Adds, Concats, Splits, weights shared by two nodes,
the five-op GELU of torch's export, multi-head attention (MatMul/Reshape/Transpose/Softmax),
a float16 round trip, LayerNorm. Every input has a symbolic batch dimension, and sequences a
symbolic length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.load import stamp_ir_version

SEQ = 3
"""Sequence length of rank-3 streams."""
SIDE = 5
"""Height and width of image streams (every conv keeps them)."""
VOCAB = 11


@dataclass
class Stream:
    """The tensor the next block reads: its name, rank and channel width (the last axis, or
    axis 1 for images)."""

    name: str
    rank: int
    width: int


class GraphBuilder:
    """Nodes and initializers with fresh names; weights drawn from one seeded generator."""

    def __init__(self, seed: int, opset: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        name = self.fresh(prefix)
        value = np.asarray(value)
        if value.dtype != np.int64:
            value = value.astype(np.float32)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, shape: Sequence[int], fan_in: int, prefix: str = "w") -> str:
        value = self.rng.standard_normal(tuple(shape)) / math.sqrt(fan_in)
        if self.rng.random() < 0.1:  # a Constant node, as the TorchScript exporter sometimes writes
            out = self.fresh(prefix)
            self.nodes.append(helper.make_node(
                "Constant", [], [out], name=self.fresh("Constant"),
                value=numpy_helper.from_array(value.astype(np.float32))))
            return out
        return self.const(value, prefix)

    def op(self, op_type: str, inputs: Sequence[str], outputs: int = 1, **attrs) -> str | list[str]:
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names,
                                           name=self.fresh(op_type), **attrs))
        return names[0] if outputs == 1 else names

    # ----------------------------------------------------------------- small pieces
    def linear(self, x: str, k: int, n: int, bias: bool = True) -> str:
        if self.rng.random() < 0.2:  # stored [n, k] behind a Transpose, as some exporters do
            w = self.op("Transpose", [self.weight((n, k), k)], perm=[1, 0])
        else:
            w = self.weight((k, n), k)
        y = self.op("MatMul", [x, w])
        return self.op("Add", [y, self.const(self.rng.standard_normal(n) * 0.1, "b")]) if bias \
            else y

    def gemm(self, x: str, k: int, n: int) -> str:
        trans_b = int(self.rng.integers(0, 2))
        shape = (n, k) if trans_b else (k, n)
        alpha = float(self.rng.choice([1.0, 0.5]))
        return self.op("Gemm", [x, self.weight(shape, k), self.const(self.rng.standard_normal(n))],
                       transB=trans_b, alpha=alpha, beta=1.0)

    def conv(self, x: str, c: int, o: int, group: int = 1) -> str:
        w = self.weight((o, c // group, 3, 3), 9 * c // group)
        dilation = int(self.rng.choice([1, 1, 2]))
        bias = [self.const(self.rng.standard_normal(o) * 0.1, "b")] if self.rng.random() < 0.8 \
            else []
        if dilation == 1 and self.rng.random() < 0.3:  # tf2onnx / keras write SAME padding
            y = self.op("Conv", [x, w, *bias], auto_pad="SAME_UPPER", group=group)
        else:
            y = self.op("Conv", [x, w, *bias], pads=[dilation] * 4, dilations=[dilation] * 2,
                        group=group)
        if self.rng.random() < 0.2:  # a per-channel scale (a folded norm or a layer scale)
            y = self.op("Mul", [y, self.const(self.rng.uniform(0.5, 2, (1, o, 1, 1)), "s")])
        return y

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        return self.op("BatchNormalization", [
            x, self.const(r.uniform(0.5, 2, c)), self.const(r.standard_normal(c) * 0.1),
            self.const(r.standard_normal(c) * 0.1), self.const(r.uniform(0.5, 2, c))])

    def act(self, x: str, width: int | None = None, image: bool = False) -> str:
        """An activation; with ``width``, possibly a PRelu with one slope per channel."""
        kinds = ["Relu", "Sigmoid", "Tanh", "gelu", "LeakyRelu", "none"]
        kind = self.rng.choice([*kinds, "PRelu"] if width else kinds)
        if kind == "none":
            return x
        if kind == "PRelu":
            shape = (width, 1, 1) if image else (width,)
            return self.op("PRelu", [x, self.const(self.rng.uniform(0.05, 0.3, shape), "slope")])
        if kind == "LeakyRelu":
            return self.op("LeakyRelu", [x], alpha=0.1)
        return self.gelu(x) if kind == "gelu" else self.op(str(kind), [x])

    def gelu(self, x: str) -> str:
        """torch's export: Div(√2) → Erf → Add(1) → Mul(x) → Mul(0.5)."""
        erf = self.op("Erf", [self.op("Div", [x, self.const(np.array(1.4142135))])])
        plus = self.op("Add", [erf, self.const(np.array(1.0))])
        return self.op("Mul", [self.op("Mul", [x, plus]), self.const(np.array(0.5))])

    def split2(self, x: str, axis: int, half: int) -> list[str]:
        if self.opset >= 13:
            return self.op("Split", [x, self.const(np.array([half, half], np.int64))], 2,
                           axis=axis)
        return self.op("Split", [x], 2, axis=axis, split=[half, half])


# --------------------------------------------------------------------------- blocks
def _width(g: GraphBuilder) -> int:
    return int(g.rng.choice([4, 6, 8]))


def b_linear(g: GraphBuilder, s: Stream) -> Stream:
    n = _width(g)
    y = g.gemm(s.name, s.width, n) if s.rank == 2 and g.rng.random() < 0.5 \
        else g.linear(s.name, s.width, n)
    return Stream(g.act(y, n), s.rank, n)


def b_ffn_residual(g: GraphBuilder, s: Stream) -> Stream:
    hidden = _width(g)
    h = g.gelu(g.linear(s.name, s.width, hidden))
    return Stream(g.op("Add", [s.name, g.linear(h, hidden, s.width)]), s.rank, s.width)


def b_concat(g: GraphBuilder, s: Stream) -> Stream:
    a, b = _width(g), _width(g)
    ya, yb = g.linear(s.name, s.width, a), g.op("Relu", [g.linear(s.name, s.width, b)])
    return Stream(g.op("Concat", [ya, yb], axis=-1), s.rank, a + b)


def b_split(g: GraphBuilder, s: Stream) -> Stream:
    half = _width(g) // 2
    y = g.linear(s.name, s.width, 2 * half)
    a, b = g.split2(y, -1, half)
    merge = str(g.rng.choice(["Add", "Mul"]))
    return Stream(g.op(merge, [g.op("Relu", [a]), b]), s.rank, half)


def b_shared(g: GraphBuilder, s: Stream) -> Stream:
    """One weight read by two MatMuls (as tied or unrolled layers export)."""
    w = g.weight((s.width, s.width), s.width)
    y = g.op("MatMul", [s.name, w])
    if s.rank == 2 and g.rng.random() < 0.5:  # the same weight in a Gemm
        z = g.op("Gemm", [g.op("Relu", [y]), w])
    else:
        z = g.op("MatMul", [g.op("Relu", [y]), w])
    return Stream(g.op("Add", [y, z]), s.rank, s.width)


def b_layernorm(g: GraphBuilder, s: Stream) -> Stream:
    if g.opset < 17:
        return Stream(g.op("Softmax", [s.name], axis=-1), s.rank, s.width)
    return Stream(g.op("LayerNormalization", [s.name, g.const(np.ones(s.width)),
                                              g.const(np.zeros(s.width))], axis=-1),
                  s.rank, s.width)


def b_half_roundtrip(g: GraphBuilder, s: Stream) -> Stream:
    """A float16 stretch between float32 nodes (mixed dtypes)."""
    half = g.op("Cast", [s.name], to=TensorProto.FLOAT16)
    return Stream(g.op("Cast", [g.op("Relu", [half])], to=TensorProto.FLOAT), s.rank, s.width)


def b_attention(g: GraphBuilder, s: Stream) -> Stream:
    """x + MHA(x): Q, K, V projections, heads split by Reshape/Transpose, Softmax, output
    projection — the shape torch exports."""
    d = s.width
    heads = int(g.rng.choice([h for h in (1, 2, 3) if d % h == 0]))
    hd = d // heads
    def dim(tensor: str, index: int) -> str:
        """``Unsqueeze(Gather(Shape(tensor), index))``: one run-time piece of a shape."""
        picked = g.op("Gather", [g.op("Shape", [tensor]), g.const(np.array(index, np.int64))],
                      axis=0)
        return g.op("Unsqueeze", [picked, g.const(np.array([0], np.int64))])

    style = str(g.rng.choice(["constant", "concat", "torchscript"])) if g.opset >= 13 \
        else "constant"
    heads_piece = g.const(np.array([heads, hd], np.int64))
    if style == "concat":  # batch and length at run time, heads and sizes constant
        dims = [dim(s.name, 0), dim(s.name, 1)]
        merged_shape = g.op("Concat", [*dims, g.const(np.array([d], np.int64))], axis=0)
    elif style == "torchscript":  # as above, each projection's own Shape; d_model at run time
        merged_shape = g.op("Concat", [dim(s.name, 0), dim(s.name, 1), dim(s.name, 2)], axis=0)
    else:
        merged_shape = g.const(np.array([0, 0, d], np.int64), "shape")

    def project(perm: list[int]) -> str:
        y = g.linear(s.name, d, d)
        if style == "constant":
            shape = g.const(np.array([0, 0, heads, hd], np.int64), "shape")
        else:
            source = y if style == "torchscript" else s.name
            shape = g.op("Concat", [dim(source, 0), dim(source, 1), heads_piece], axis=0)
        return g.op("Transpose", [g.op("Reshape", [y, shape])], perm=perm)

    q, k, v = project([0, 2, 1, 3]), project([0, 2, 3, 1]), project([0, 2, 1, 3])
    scores = g.op("Div", [g.op("MatMul", [q, k]), g.const(np.array(math.sqrt(hd)))])
    probs = g.op("Softmax", [scores], axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    merged = g.op("Reshape", [ctx, merged_shape])
    return Stream(g.op("Add", [s.name, g.linear(merged, d, d)]), s.rank, d)


def b_conv(g: GraphBuilder, s: Stream) -> Stream:
    o = _width(g)
    y = g.conv(s.name, s.width, o)
    if g.rng.random() < 0.6:
        y = g.bn(y, o)
    return Stream(g.act(y, o, image=True), 4, o)


def b_depthwise(g: GraphBuilder, s: Stream) -> Stream:
    y = g.conv(s.name, s.width, s.width, group=s.width)
    return Stream(g.op("Relu", [g.bn(y, s.width)]), 4, s.width)


def b_conv_residual(g: GraphBuilder, s: Stream) -> Stream:
    mid = _width(g)
    h = g.op("Relu", [g.bn(g.conv(s.name, s.width, mid), mid)])
    return Stream(g.op("Add", [s.name, g.conv(h, mid, s.width)]), 4, s.width)


def b_conv_concat(g: GraphBuilder, s: Stream) -> Stream:
    a, b = _width(g), _width(g)
    y = g.op("Concat", [g.conv(s.name, s.width, a), g.conv(s.name, s.width, b)], axis=1)
    return Stream(g.op("Relu", [y]), 4, a + b)


def b_conv_split(g: GraphBuilder, s: Stream) -> Stream:
    half = _width(g) // 2
    a, b = g.split2(g.conv(s.name, s.width, 2 * half), 1, half)
    return Stream(g.op("Add", [a, g.op("Relu", [b])]), 4, half)


def b_conv_shared(g: GraphBuilder, s: Stream) -> Stream:
    w = g.weight((s.width, s.width, 3, 3), 9 * s.width)
    y = g.op("Conv", [s.name, w], pads=[1, 1, 1, 1])
    z = g.op("Conv", [g.op("Relu", [y]), w], pads=[1, 1, 1, 1])
    return Stream(g.op("Add", [y, z]), 4, s.width)


def b_pool(g: GraphBuilder, s: Stream) -> Stream:
    if g.rng.random() < 0.5:
        return Stream(g.op("MaxPool", [s.name], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), 4,
                      s.width)
    return Stream(g.op("AveragePool", [s.name], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                       count_include_pad=1), 4, s.width)


def b_flatten(g: GraphBuilder, s: Stream) -> Stream:
    """Image → vector: global pooling then Flatten, Flatten of the whole map, or torch's
    ``x.view(b, -1)`` (a Reshape to [0, -1], or TorchScript's Shape/Gather/Concat target)."""
    kind = g.rng.random()
    if kind < 0.4:
        return Stream(g.op("Flatten", [g.op("GlobalAveragePool", [s.name])], axis=1), 2,
                      s.width)
    if kind < 0.6:
        return Stream(g.op("Reshape", [s.name, g.const(np.array([0, -1], np.int64), "shape")]),
                      2, s.width * SIDE * SIDE)
    if kind < 0.8 and g.opset >= 13:  # the TorchScript export of x.view(x.size(0), -1)
        batch = g.op("Unsqueeze", [g.op("Gather", [g.op("Shape", [s.name]),
                                                   g.const(np.array(0, np.int64))], axis=0),
                                   g.const(np.array([0], np.int64))])
        target = g.op("Concat", [batch, g.const(np.array([-1], np.int64))], axis=0)
        return Stream(g.op("Reshape", [s.name, target]), 2, s.width * SIDE * SIDE)
    return Stream(g.op("Flatten", [s.name], axis=1), 2, s.width * SIDE * SIDE)


def b_pointwise(g: GraphBuilder, s: Stream) -> Stream:
    """A channels-last linear inside an image block (ConvNeXt/Swin exports): Transpose to NHWC,
    MatMul over the channels, activation, Transpose back."""
    o = _width(g)
    nhwc = g.op("Transpose", [s.name], perm=[0, 2, 3, 1])
    y = g.act(g.linear(nhwc, s.width, o))
    return Stream(g.op("Transpose", [y], perm=[0, 3, 1, 2]), 4, o)


def b_conv1d(g: GraphBuilder, s: Stream) -> Stream:
    """A 1-D conv over the sequence (audio and CRNN exports): Transpose to [B, D, S], Conv1d,
    BatchNorm, activation, Transpose back."""
    o = _width(g)
    ncl = g.op("Transpose", [s.name], perm=[0, 2, 1])
    w = g.weight((o, s.width, 3), 3 * s.width)
    y = g.op("Conv", [ncl, w, g.const(g.rng.standard_normal(o) * 0.1, "b")], pads=[1, 1])
    y = g.act(g.bn(y, o))
    return Stream(g.op("Transpose", [y], perm=[0, 2, 1]), 3, o)


def b_slice(g: GraphBuilder, s: Stream) -> Stream:
    """The first channels of a projection (``y[..., :k]``)."""
    n = _width(g)
    k = max(1, n // 2)
    y = g.linear(s.name, s.width, n)
    if g.opset >= 10:
        y = g.op("Slice", [y, g.const(np.array([0], np.int64)), g.const(np.array([k], np.int64)),
                           g.const(np.array([-1], np.int64))])
    return Stream(g.op("Relu", [y]), s.rank, k)


BLOCKS = {
    4: (b_conv, b_depthwise, b_conv_residual, b_conv_concat, b_conv_split, b_conv_shared,
        b_pool, b_half_roundtrip, b_flatten, b_pointwise),
    3: (b_linear, b_ffn_residual, b_concat, b_split, b_shared, b_layernorm, b_half_roundtrip,
        b_attention, b_slice, b_conv1d),
    2: (b_linear, b_ffn_residual, b_concat, b_split, b_shared, b_layernorm, b_half_roundtrip,
        b_slice),
}
STARTS = ("image", "sequence", "vector", "tokens")


@dataclass(frozen=True)
class Recipe:
    """What to build: ``start`` stream kind, block picks, output head, opset and weight seed."""

    start: str
    picks: tuple[int, ...]
    opset: int
    seed: int
    second_output: bool = False

    def blocks(self) -> list[str]:
        """The block names the picks resolve to (for labels and failure messages)."""
        return [name for name, _ in _resolve(self)]


def _start_rank(start: str) -> int:
    return {"image": 4, "sequence": 3, "vector": 2, "tokens": 3}[start]


def _resolve(recipe: Recipe) -> list[tuple[str, object]]:
    rank, out = _start_rank(recipe.start), []
    for pick in recipe.picks:
        block = BLOCKS[rank][pick % len(BLOCKS[rank])]
        out.append((block.__name__[2:], block))
        if block is b_flatten:
            rank = 2
    return out


def build(recipe: Recipe) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """The model of ``recipe`` and its input shapes at batch 1 (batch is the first dim).

    Returns:
        (model, {input name: shape with batch 1}).
    """
    g = GraphBuilder(recipe.seed, recipe.opset)
    inputs, shapes = [], {}
    if recipe.start == "tokens":
        width = 8
        inputs.append(helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]))
        shapes["ids"] = (1, SEQ)
        stream = Stream(g.op("Gather", [g.weight((VOCAB, width), 1, "emb"), "ids"], axis=0), 3,
                        width)
    else:
        width = int(g.rng.choice([3, 4, 6]))
        dims = {"image": [width, SIDE, SIDE], "sequence": ["seq", width], "vector": [width]}
        inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                    ["batch", *dims[recipe.start]]))
        shapes["x"] = (1, *[SEQ if d == "seq" else d for d in dims[recipe.start]])
        stream = Stream("x", _start_rank(recipe.start), width)
    if recipe.start == "tokens" and g.opset >= 13:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"]))
        shapes["mask"] = (1, SEQ)
        keep = g.op("Unsqueeze", [g.op("Cast", ["mask"], to=TensorProto.FLOAT),
                                  g.const(np.array([-1], np.int64))])
        stream = Stream(g.op("Mul", [stream.name, keep]), 3, width)
    extra: Stream | None = None
    for _, block in _resolve(recipe):
        stream = block(g, stream)
        if extra is None and recipe.second_output and stream.rank != 4:
            extra = stream
    if stream.rank == 4:
        stream = b_flatten(g, stream)
    head = g.gemm(stream.name, stream.width, 5) if stream.rank == 2 and recipe.seed % 2 \
        else g.op("MatMul", [stream.name, g.weight((stream.width, 5), stream.width)])
    if recipe.seed % 3:
        g.nodes.append(helper.make_node("Identity", [head], ["y"], name="out"))
    else:  # the last node writes the graph output itself
        g.nodes[-1].output[0] = "y"
    out_dims = ["batch", 5] if stream.rank == 2 else ["batch", "seq", 5]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)]
    if extra is not None:
        g.nodes.append(helper.make_node("Identity", [extra.name], ["side"], name="side_out"))
        dims = ["batch", extra.width] if extra.rank == 2 else ["batch", "seq", extra.width]
        outputs.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, dims))
    graph = helper.make_graph(g.nodes, "fuzz", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", recipe.opset)])
    model = stamp_ir_version(model)
    onnx.checker.check_model(model, full_check=True)
    return model, shapes


def random_feed(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], batch: int,
                seed: int, seq: int = SEQ) -> dict[str, np.ndarray]:
    """Inputs at ``batch`` and sequence length ``seq`` (token ids in the vocabulary, masks of
    0/1 with a 1 in every row)."""
    rng = np.random.default_rng(seed)
    dynamic = {i.name for i in model.graph.input
               if len(i.type.tensor_type.shape.dim) > 1
               and i.type.tensor_type.shape.dim[1].dim_param == "seq"}
    feed = {}
    for name, shape in shapes.items():
        full = (batch, *shape[1:])
        if name in dynamic:
            full = (batch, seq, *shape[2:])
        if name == "ids":
            feed[name] = rng.integers(0, VOCAB, full).astype(np.int64)
        elif name == "mask":
            mask = rng.integers(0, 2, full).astype(np.int64)
            mask[:, 0] = 1
            feed[name] = mask
        else:
            feed[name] = rng.standard_normal(full).astype(np.float32)
    return feed
