"""ONNX operators in torch, one small function each: the op table global recovery runs graphs on.

Why not a converter: onnx2torch (1.5.15, the maintained one on the registry) turns Conv and Gemm
into ``nn.Conv2d`` / ``nn.Linear`` modules built from the initializers, so the graph's tensors are
no longer addressable by their ONNX names, and it has no converter for several ops our exports
and our own layouts emit at opset 18 (``LayerNormalization`` with a non-last axis set, ``GatherND``
with batch dims, ``ReduceL2`` with an axes input). Recovery needs the opposite: every initializer
reachable by name, so that its tuned value goes back into the same initializer. The table below
is the set of ops the benchmark models and onnxprune's own rewrites use; every graph is checked
against ONNX Runtime before it is tuned, so an op whose semantics differ here is caught, and an
op missing here skips the stage naming it (:func:`unsupported_ops`).

Each function takes the node's inputs (``None`` for an omitted optional input), its attributes
as a dict, and the model's opset, and returns a list of outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto

Tensor = torch.Tensor
OpFn = Callable[[list, dict, int], list]

DTYPES: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32, TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16, TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT64: torch.int64, TensorProto.INT32: torch.int32,
    TensorProto.INT16: torch.int16, TensorProto.INT8: torch.int8,
    TensorProto.UINT8: torch.uint8, TensorProto.BOOL: torch.bool,
}

OPS: dict[str, OpFn] = {}


def op(*names: str) -> Callable[[OpFn], OpFn]:
    def register(fn: OpFn) -> OpFn:
        for name in names:
            OPS[name] = fn
        return fn
    return register


def ints(x: Tensor | None) -> list[int]:
    return [] if x is None else [int(v) for v in x.reshape(-1).tolist()]


def unary(fn: Callable[[Tensor], Tensor]) -> OpFn:
    return lambda xs, a, opset: [fn(xs[0])]


for _name, _fn in {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
    "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil,
    "Not": torch.logical_not, "Identity": lambda x: x, "Softplus": F.softplus,
    "HardSwish": F.hardswish, "Sin": torch.sin, "Cos": torch.cos,
}.items():
    OPS[_name] = unary(_fn)


def _div(a: Tensor, b: Tensor) -> Tensor:
    if a.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


for _name, _fn in {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div, "Pow": torch.pow,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
    "Xor": torch.logical_xor,
}.items():
    OPS[_name] = (lambda fn: lambda xs, a, opset: [fn(xs[0], xs[1])])(_fn)


def _variadic_of(fn: Callable[[Tensor, Tensor], Tensor], mean: bool = False) -> OpFn:
    def run(xs, a, opset):
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return [out / len(xs) if mean else out]
    return run


OPS.update(Max=_variadic_of(torch.maximum), Min=_variadic_of(torch.minimum),
           Sum=_variadic_of(torch.add), Mean=_variadic_of(torch.add, mean=True))


@op("Where")
def _where(xs, a, opset):
    return [torch.where(xs[0].bool(), xs[1], xs[2])]


@op("LeakyRelu")
def _leaky(xs, a, opset):
    return [F.leaky_relu(xs[0], a.get("alpha", 0.01))]


@op("HardSigmoid")
def _hard_sigmoid(xs, a, opset):
    return [torch.clamp(a.get("alpha", 0.2) * xs[0] + a.get("beta", 0.5), 0.0, 1.0)]


@op("Elu")
def _elu(xs, a, opset):
    return [F.elu(xs[0], a.get("alpha", 1.0))]


@op("Gelu")
def _gelu(xs, a, opset):
    approximate = a.get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    return [F.gelu(xs[0], approximate=approximate)]


@op("PRelu")
def _prelu(xs, a, opset):
    x, slope = xs
    return [torch.where(x >= 0, x, x * slope)]


@op("Clip")
def _clip(xs, a, opset):
    x = xs[0]
    if opset < 11:
        low, high = a.get("min"), a.get("max")
    else:
        low = xs[1] if len(xs) > 1 and xs[1] is not None else None
        high = xs[2] if len(xs) > 2 and xs[2] is not None else None
    if low is not None:
        x = torch.maximum(x, torch.as_tensor(low, dtype=x.dtype))
    if high is not None:
        x = torch.minimum(x, torch.as_tensor(high, dtype=x.dtype))
    return [x]


@op("Cast")
def _cast(xs, a, opset):
    return [xs[0].to(DTYPES[int(a["to"])])]


@op("CastLike")
def _cast_like(xs, a, opset):
    return [xs[0].to(xs[1].dtype)]


# ---------------------------------------------------------------------------- linear algebra
@op("MatMul")
def _matmul(xs, a, opset):
    return [torch.matmul(xs[0], xs[1])]


@op("Gemm")
def _gemm(xs, a, opset):
    x, w = xs[0], xs[1]
    if a.get("transA", 0):
        x = x.T
    if a.get("transB", 0):
        w = w.T
    y = a.get("alpha", 1.0) * (x @ w)
    if len(xs) > 2 and xs[2] is not None:
        y = y + a.get("beta", 1.0) * xs[2]
    return [y]


@op("Einsum")
def _einsum(xs, a, opset):
    equation = a["equation"]
    return [torch.einsum(equation.decode() if isinstance(equation, bytes) else equation, *xs)]


def _pads_for(a: dict, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int]) -> list[int]:
    """ONNX pads [x1_begin, x2_begin, x1_end, x2_end] with auto_pad resolved."""
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    n = len(spatial)
    if auto in ("NOTSET", ""):
        return list(a.get("pads", [0] * (2 * n)))
    if auto == "VALID":
        return [0] * (2 * n)
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        out = math.ceil(size / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(large if auto == "SAME_LOWER" else small)
        end.append(small if auto == "SAME_LOWER" else large)
    return begin + end


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX [b1, b2, e1, e2] to F.pad's (last dim first) [b2, e2, b1, e1]."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


@op("Conv")
def _conv(xs, a, opset):
    x, w = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 else None
    n = w.dim() - 2
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    strides = list(a.get("strides", [1] * n))
    dilations = list(a.get("dilations", [1] * n))
    pads = _pads_for(a, list(x.shape[2:]), kernel, strides, dilations)
    if any(pads):
        x = F.pad(x, _torch_pad(pads))
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    return [conv(x, w, bias, strides, 0, dilations, a.get("group", 1))]


# ---------------------------------------------------------------------------- pooling
def _pool(xs, a, kind: str):
    x = xs[0]
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    strides = list(a.get("strides", [1] * n))
    dilations = list(a.get("dilations", [1] * n))
    pads = _pads_for(a, list(x.shape[2:]), kernel, strides, dilations)
    ceil = bool(a.get("ceil_mode", 0))
    symmetric = pads[:n] == pads[n:] and all(p <= k // 2 for p, k in zip(pads[:n], kernel,
                                                                          strict=True))
    if kind == "max":
        if not symmetric:
            x = F.pad(x, _torch_pad(pads), value=-math.inf)
            pads = [0] * (2 * n)
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
        return [fn(x, kernel, strides, pads[:n], dilations, ceil_mode=ceil)]
    include = bool(a.get("count_include_pad", 0))
    if not symmetric:
        if not include:
            raise NotImplementedError("AveragePool with asymmetric pads excluding the padding")
        x = F.pad(x, _torch_pad(pads))
        pads = [0] * (2 * n)
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
    return [fn(x, kernel, strides, pads[:n], ceil_mode=ceil, count_include_pad=include)]


OPS["MaxPool"] = lambda xs, a, opset: _pool(xs, a, "max")
OPS["AveragePool"] = lambda xs, a, opset: _pool(xs, a, "avg")


@op("GlobalAveragePool")
def _gap(xs, a, opset):
    return [xs[0].mean(dim=tuple(range(2, xs[0].dim())), keepdim=True)]


@op("GlobalMaxPool")
def _gmp(xs, a, opset):
    return [xs[0].amax(dim=tuple(range(2, xs[0].dim())), keepdim=True)]


# ---------------------------------------------------------------------------- normalization
@op("LayerNormalization")
def _layer_norm(xs, a, opset):
    x, scale = xs[0], xs[1]
    bias = xs[2] if len(xs) > 2 else None
    axis = a.get("axis", -1) % x.dim()
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + a.get("epsilon", 1e-5)) * scale
    return [y + bias if bias is not None else y]


@op("BatchNormalization")
def _batch_norm(xs, a, opset):
    x, scale, bias, mean, var = xs[:5]
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + a.get("epsilon", 1e-5))
    return [y * scale.reshape(shape) + bias.reshape(shape)]


def _softmax_like(xs, a, opset, fn):
    x = xs[0]
    axis = a.get("axis", -1 if opset >= 13 else 1) % max(x.dim(), 1)
    if opset >= 13:
        return [fn(x, dim=axis)]
    flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
    return [fn(flat, dim=1).reshape(x.shape)]


OPS["Softmax"] = lambda xs, a, opset: _softmax_like(xs, a, opset, torch.softmax)
OPS["LogSoftmax"] = lambda xs, a, opset: _softmax_like(xs, a, opset, torch.log_softmax)


# ---------------------------------------------------------------------------- reductions
def _reduce(xs, a, opset, fn, axes_input_since: int):
    x = xs[0]
    if opset >= axes_input_since:
        axes = ints(xs[1]) if len(xs) > 1 and xs[1] is not None else []
    else:
        axes = list(a.get("axes", []))
    keep = bool(a.get("keepdims", 1))
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.dim()))
    return [fn(x, tuple(ax % x.dim() for ax in axes), keep)]


for _name, _fn, _since in (
    ("ReduceMean", lambda x, d, k: x.mean(dim=d, keepdim=k), 18),
    ("ReduceSum", lambda x, d, k: x.sum(dim=d, keepdim=k), 13),
    ("ReduceMax", lambda x, d, k: x.amax(dim=d, keepdim=k), 18),
    ("ReduceMin", lambda x, d, k: x.amin(dim=d, keepdim=k), 18),
    ("ReduceProd", lambda x, d, k: _prod(x, d, k), 18),
    ("ReduceL2", lambda x, d, k: torch.sqrt((x * x).sum(dim=d, keepdim=k)), 18),
    ("ReduceL1", lambda x, d, k: x.abs().sum(dim=d, keepdim=k), 18),
    ("ReduceSumSquare", lambda x, d, k: (x * x).sum(dim=d, keepdim=k), 18),
):
    OPS[_name] = (lambda fn, since: lambda xs, a, opset: _reduce(xs, a, opset, fn, since))(
        _fn, _since)


def _prod(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    for d in sorted(dims, reverse=True):
        x = x.prod(dim=d, keepdim=keep)
    return x


def _arg(fn):
    def run(xs, a, opset):
        if a.get("select_last_index", 0):
            raise NotImplementedError("ArgMax/ArgMin with select_last_index")
        return [fn(xs[0], dim=a.get("axis", 0), keepdim=bool(a.get("keepdims", 1)))]
    return run


OPS.update(ArgMax=_arg(torch.argmax), ArgMin=_arg(torch.argmin))


# ---------------------------------------------------------------------------- shapes and indexing
@op("Shape")
def _shape(xs, a, opset):
    dims = list(xs[0].shape)
    start, end = a.get("start", 0), a.get("end", len(dims))
    return [torch.tensor(dims[start:end] if a.get("end") is not None else dims[start:],
                         dtype=torch.int64)]


@op("Size")
def _size(xs, a, opset):
    return [torch.tensor(xs[0].numel(), dtype=torch.int64)]


@op("Reshape")
def _reshape(xs, a, opset):
    x = xs[0]
    shape = ints(xs[1]) if opset >= 5 else list(a["shape"])
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


@op("Flatten")
def _flatten(xs, a, opset):
    x = xs[0]
    axis = a.get("axis", 1) % (x.dim() + 1) if x.dim() else 0
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


@op("Transpose")
def _transpose(xs, a, opset):
    x = xs[0]
    perm = a.get("perm", list(reversed(range(x.dim()))))
    return [x.permute(*perm)]


def _axes(xs, a, opset, since: int) -> list[int]:
    if opset >= since:
        return ints(xs[1]) if len(xs) > 1 and xs[1] is not None else []
    return list(a.get("axes", []))


@op("Squeeze")
def _squeeze(xs, a, opset):
    x = xs[0]
    axes = _axes(xs, a, opset, 13)
    if not axes:
        return [x.squeeze()]
    for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
        x = x.squeeze(ax)
    return [x]


@op("Unsqueeze")
def _unsqueeze(xs, a, opset):
    x = xs[0]
    axes = _axes(xs, a, opset, 13)
    rank = x.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(ax)
    return [x]


@op("Concat")
def _concat(xs, a, opset):
    parts = [x for x in xs if x is not None and (x.numel() or x.dim() > 1)]
    return [torch.cat(parts or [xs[0]], dim=a["axis"])]


@op("Split")
def _split(xs, a, opset):
    x = xs[0]
    axis = a.get("axis", 0)
    split = ints(xs[1]) if opset >= 13 and len(xs) > 1 and xs[1] is not None \
        else list(a.get("split", []))
    if not split:
        count = a.get("num_outputs") or a["_outputs"]
        size = x.shape[axis]
        step = -(-size // count)
        split = [min(step, size - i * step) for i in range(count)]
    return list(torch.split(x, split, dim=axis))


@op("Slice")
def _slice(xs, a, opset):
    x = xs[0]
    if opset >= 10:
        starts, ends = ints(xs[1]), ints(xs[2])
        axes = ints(xs[3]) if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
        steps = ints(xs[4]) if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
    else:
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    index: list = [slice(None)] * x.dim()
    flips = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= x.dim()
        size = x.shape[axis]
        if step > 0:
            lo = max(0, min(size, start + size if start < 0 else start))
            hi = max(0, min(size, end + size if end < 0 else end))
            index[axis] = slice(lo, hi, step)
        else:  # torch has no negative steps: pick the indices
            lo = max(-1, min(size - 1, start + size if start < 0 else start))
            hi = max(-1, min(size - 1, end + size if end < 0 else end))
            flips.append((axis, torch.arange(lo, hi, step, dtype=torch.int64)))
    y = x[tuple(index)]
    for axis, picked in flips:
        y = y.index_select(axis, picked)
    return [y]


@op("Gather")
def _gather(xs, a, opset):
    x, index = xs[0], xs[1].long()
    axis = a.get("axis", 0) % x.dim()
    index = torch.where(index < 0, index + x.shape[axis], index)
    out = x.index_select(axis, index.reshape(-1))
    shape = list(x.shape[:axis]) + list(index.shape) + list(x.shape[axis + 1:])
    return [out.reshape(shape)]


@op("GatherElements")
def _gather_elements(xs, a, opset):
    x, index = xs[0], xs[1].long()
    axis = a.get("axis", 0) % x.dim()
    index = torch.where(index < 0, index + x.shape[axis], index)
    return [torch.gather(x, axis, index)]


@op("GatherND")
def _gather_nd(xs, a, opset):
    x, index = xs[0], xs[1].long()
    batch = a.get("batch_dims", 0)
    depth = index.shape[-1]
    batch_shape = list(x.shape[:batch])
    flat_x = x.reshape(int(np.prod(batch_shape)) if batch else 1, *x.shape[batch:])
    flat_i = index.reshape(flat_x.shape[0], -1, depth)
    picked = []
    for b in range(flat_x.shape[0]):
        idx = flat_i[b]
        dims = flat_x.shape[1:1 + depth]
        idx = torch.where(idx < 0, idx + torch.tensor(list(dims)), idx)
        picked.append(flat_x[b][tuple(idx.T)])
    out = torch.stack(picked)
    shape = list(index.shape[:-1]) + list(x.shape[batch + depth:])
    return [out.reshape(shape)]


@op("Expand")
def _expand(xs, a, opset):
    x = xs[0]
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(ints(xs[1])))
    return [x.expand(shape)]


@op("Tile")
def _tile(xs, a, opset):
    return [xs[0].repeat(*ints(xs[1]))]


@op("Range")
def _range(xs, a, opset):
    start, limit, delta = (x.item() for x in xs)
    return [torch.arange(start, limit, delta, dtype=xs[0].dtype)]


def _tensor_attr(value: onnx.TensorProto) -> Tensor:
    return torch.from_numpy(np.array(onnx.numpy_helper.to_array(value)))


@op("ConstantOfShape")
def _constant_of_shape(xs, a, opset):
    value = _tensor_attr(a["value"]) if "value" in a else torch.zeros(1)
    return [torch.full(ints(xs[0]), value.reshape(-1)[0].item(), dtype=value.dtype)]


@op("Constant")
def _constant(xs, a, opset):
    if "value" in a:
        return [_tensor_attr(a["value"])]
    for key, dtype in (("value_float", torch.float32), ("value_int", torch.int64),
                       ("value_floats", torch.float32), ("value_ints", torch.int64)):
        if key in a:
            return [torch.tensor(a[key], dtype=dtype)]
    raise NotImplementedError("Constant without a dense value")


@op("Pad")
def _pad(xs, a, opset):
    x = xs[0]
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if opset >= 11:
        pads = ints(xs[1])
        value = xs[2].item() if len(xs) > 2 and xs[2] is not None and xs[2].numel() else 0.0
        if len(xs) > 3 and xs[3] is not None:
            axes = [ax % x.dim() for ax in ints(xs[3])]
            full = [0] * (2 * x.dim())
            for i, ax in enumerate(axes):
                full[ax], full[ax + x.dim()] = pads[i], pads[i + len(axes)]
            pads = full
    else:
        pads, value = list(a["pads"]), a.get("value", 0.0)
    if mode != "constant":
        raise NotImplementedError(f"Pad mode {mode}")
    return [F.pad(x, _torch_pad(pads), value=value)]


@op("Resize")
def _resize(xs, a, opset):
    x = xs[0]
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    coord = a.get("coordinate_transformation_mode", b"half_pixel")
    coord = coord.decode() if isinstance(coord, bytes) else coord
    nearest = a.get("nearest_mode", b"round_prefer_floor")
    nearest = nearest.decode() if isinstance(nearest, bytes) else nearest
    scales = xs[2] if len(xs) > 2 and xs[2] is not None and xs[2].numel() else None
    sizes = xs[3] if len(xs) > 3 and xs[3] is not None and xs[3].numel() else None
    if sizes is not None:
        out = ints(sizes)[2:]
    else:
        assert scales is not None
        out = [int(math.floor(s * f)) for s, f in zip(x.shape[2:], scales.tolist()[2:],
                                                      strict=True)]
    if mode == "nearest" and coord == "asymmetric" and nearest == "floor":
        return [F.interpolate(x, size=out, mode="nearest")]
    if mode == "linear" and coord in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        kind = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(out)]
        return [F.interpolate(x, size=out, mode=kind, align_corners=coord == "align_corners")]
    raise NotImplementedError(f"Resize mode={mode} coordinate_transformation_mode={coord} "
                              f"nearest_mode={nearest}")


def attributes(node: onnx.NodeProto) -> dict:
    """The node's attributes as Python values (tensors stay TensorProto)."""
    values = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
    values["_outputs"] = len(node.output)
    return values
