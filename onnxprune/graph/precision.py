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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

logger = logging.getLogger("onnxprune")

LOW = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


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
    for info in _value_infos(graph):
        if info.type.tensor_type.elem_type in LOW:
            info.type.tensor_type.elem_type = TensorProto.FLOAT
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
    for info in _value_infos(graph):
        if info.type.tensor_type.elem_type == TensorProto.FLOAT and info.name not in keep:
            info.type.tensor_type.elem_type = precision.dtype
    return out
