"""fp16 / bf16 models: solved in a float32 twin, written back in the model's own dtype.

Every solver, rewrite and statistic in onnxprune works in float32 (OBS needs the precision, and
calibration statistics accumulate). A half-precision model is therefore pruned through its float32
*twin* — the same graph with every fp16/bf16 tensor, Cast target and type annotation widened to
float32 — and the pruned twin is *lowered* again: every float tensor that was half precision in the
input (and every tensor a rewrite created) goes back to that dtype, every Cast gets its original
target back, and the tensors the input kept in float32 (the Casts' float32 side that
``convert_float_to_float16(keep_io_types=True)`` puts at the inputs and outputs, blocked ops) stay
float32. So the converter's Cast pattern survives, and the model that is timed against the input
and written is the half-precision one.

Graph inputs and outputs keep their dtype in the twin (a half-precision input is widened by a Cast
the twin adds, an output narrowed by one), so the calibration data, the timing inputs and the
outputs compared are the same for the twin and the written model; lowering removes those Casts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

logger = logging.getLogger("onnxprune")

LOW = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
_EDGE = "onnxprune_twin_cast"  # name prefix of the Casts the twin adds at half-precision IO


@dataclass(frozen=True)
class LowPrecision:
    """How to lower a float32 twin back to the input's precision.

    Attributes:
        dtype: the half-precision ONNX dtype of the input's weights (FLOAT16 or BFLOAT16).
        float32_names: tensors that were float32 in the input (kept float32 when lowering).
        cast_targets: per Cast node name, its original ``to``.
    """

    dtype: int
    float32_names: frozenset[str]
    cast_targets: dict[str, int]

    @property
    def name(self) -> str:
        return helper.tensor_dtype_to_string(self.dtype).removeprefix("TensorProto.").lower()


def _to_float32(tensor: onnx.TensorProto) -> None:
    value = numpy_helper.to_array(tensor).astype(np.float32)
    tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))


def _to_low(tensor: onnx.TensorProto, dtype: int) -> None:
    value = numpy_helper.to_array(tensor)
    if dtype == TensorProto.FLOAT16:
        tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float16), tensor.name))
    else:
        tensor.CopyFrom(helper.make_tensor(tensor.name, TensorProto.BFLOAT16, value.shape,
                                           value.astype(np.float32).reshape(-1).tolist()))


def _value_infos(graph: onnx.GraphProto):
    return [*graph.input, *graph.output, *graph.value_info]


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _cast_edges(graph: onnx.GraphProto) -> None:
    """Give half-precision graph inputs and outputs a float32 side inside the twin."""
    inputs = [v for v in graph.input if v.type.tensor_type.elem_type in LOW]
    casts = []
    for value in inputs:
        wide = f"{value.name}/{_EDGE}"
        _rename_uses(graph, value.name, wide)
        casts.append(helper.make_node("Cast", [value.name], [wide], to=TensorProto.FLOAT,
                                      name=f"{_EDGE}/{value.name}"))
    for value in graph.output:
        dtype = value.type.tensor_type.elem_type
        if dtype not in LOW:
            continue
        wide = f"{value.name}/{_EDGE}"
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == value.name:
                    node.output[i] = wide
        _rename_uses(graph, value.name, wide)
        graph.node.append(helper.make_node("Cast", [wide], [value.name], to=dtype,
                                           name=f"{_EDGE}/{value.name}"))
    for cast in reversed(casts):
        graph.node.insert(0, cast)


def _drop_cast_edges(graph: onnx.GraphProto) -> None:
    """Undo :func:`_cast_edges` on the (pruned, lowered) model."""
    outputs = {v.name for v in graph.output}
    for cast in [n for n in graph.node if n.name.startswith(f"{_EDGE}/")]:
        source, target = cast.input[0], cast.output[0]
        graph.node.remove(cast)
        if target in outputs:  # producer writes the output again
            for node in graph.node:
                for i, name in enumerate(node.output):
                    if name == source:
                        node.output[i] = target
            _rename_uses(graph, source, target)
        else:
            _rename_uses(graph, target, source)
    edge = [v for v in graph.value_info if _EDGE in v.name]
    for value in edge:
        graph.value_info.remove(value)


def _float_tensors(graph: onnx.GraphProto):
    """Every TensorProto of the graph: initializers and tensor attributes (Constant values)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def detect(model: onnx.ModelProto) -> int | None:
    """The half-precision dtype of the model's float initializers, or None for float32 models.

    Mixed fp16 + bf16 weights are not supported and are reported as None here (then the
    candidates' dtype check explains the refusal per node).
    """
    found = {t.data_type for t in model.graph.initializer if t.data_type in LOW}
    return found.pop() if len(found) == 1 else None


def widen(model: onnx.ModelProto) -> tuple[onnx.ModelProto, LowPrecision | None]:
    """The float32 twin of a half-precision model, and what lowering it back needs.

    A float32 model is returned unchanged with None.
    """
    dtype = detect(model)
    if dtype is None:
        return model, None
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    graph = twin.graph
    float32_names = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    float32_names |= {v.name for v in _value_infos(graph)
                      if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    float32_names |= {v.name for v in [*graph.input, *graph.output]}  # IO keeps its dtype
    cast_targets: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            cast_targets[node.name] = to.i
            if to.i == TensorProto.FLOAT:
                float32_names.update(node.output)
            elif to.i in LOW:
                to.i = TensorProto.FLOAT
    for tensor in _float_tensors(graph):
        if tensor.data_type in LOW:
            _to_float32(tensor)
    for info in graph.value_info:
        if info.type.tensor_type.elem_type in LOW:
            info.type.tensor_type.elem_type = TensorProto.FLOAT
    _cast_edges(graph)
    return twin, LowPrecision(dtype, frozenset(float32_names), cast_targets)


def lower(model: onnx.ModelProto, precision: LowPrecision) -> onnx.ModelProto:
    """The pruned float32 twin back in the input's precision (a new model).

    Float tensors named in ``precision.float32_names`` stay float32; every other float32
    initializer, Constant value and type annotation becomes ``precision.dtype``; Casts get their
    original target back (a Cast a rewrite created keeps its own).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep = precision.float32_names
    for tensor in graph.initializer:
        if tensor.data_type == TensorProto.FLOAT and tensor.name not in keep:
            _to_low(tensor, precision.dtype)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT \
                    and not set(node.output) & keep:
                _to_low(attr.t, precision.dtype)
        if node.op_type == "Cast" and node.name in precision.cast_targets:
            next(a for a in node.attribute if a.name == "to").i = \
                precision.cast_targets[node.name]
    for info in graph.value_info:
        if info.type.tensor_type.elem_type == TensorProto.FLOAT and info.name not in keep:
            info.type.tensor_type.elem_type = precision.dtype
    _drop_cast_edges(graph)
    return out
