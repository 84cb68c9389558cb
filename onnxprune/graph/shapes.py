"""Binding the deployment shapes and inferring every activation shape from them.

Timing and reconstruction must happen at the shapes the user deploys at (``--shape
input_ids=8x128``). Dynamic dimensions the user does not bind get a documented default of 1, and a
note says so, because a batch of 1 and a batch of 64 give very different pruning plans.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.common.errors import UserError

logger = logging.getLogger("onnxprune")

DEFAULT_DYNAMIC_DIM = 1
_DIMS_RE = re.compile(r"^\d+(x\d+)*$")


def parse_shape_specs(specs: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``--shape NAME=DIMS`` options, e.g. ``input_ids=8x128``.

    Raises:
        UserError: the spec is not ``NAME=DxDx...`` with positive integers, or a name repeats.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition("=")
        dims = dims.strip().lower().replace(",", "x")
        if not sep or not name or not _DIMS_RE.match(dims):
            raise UserError(
                f"bad --shape {spec!r}: expected NAME=DIMS with positive integers, "
                f"e.g. input_ids=8x128"
            )
        values = tuple(int(d) for d in dims.split("x"))
        if any(v <= 0 for v in values):
            raise UserError(f"bad --shape {spec!r}: every dimension must be positive")
        if name in shapes:
            raise UserError(f"--shape given twice for input {name!r}")
        shapes[name] = values
    return shapes


@dataclass(frozen=True)
class InputSpec:
    """A graph input at a concrete (bound) shape."""

    name: str
    elem_type: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class BoundInputs:
    """The model's real inputs at the deployment shapes, plus notes on defaults used."""

    inputs: tuple[InputSpec, ...]
    notes: tuple[str, ...] = field(default=())

    def as_tuples(self) -> list[tuple[str, int, tuple[int, ...]]]:
        return [(i.name, i.elem_type, i.shape) for i in self.inputs]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {i.name: i.shape for i in self.inputs}


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs (not initializers listed as inputs, as old IRs do)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def bind_input_shapes(
    model: onnx.ModelProto, requested: Mapping[str, tuple[int, ...]]
) -> BoundInputs:
    """Give every graph input a concrete shape.

    Args:
        model: the model.
        requested: user-given shapes by input name (from :func:`parse_shape_specs`).

    Returns:
        Concrete input specs; symbolic dims shared between inputs (same ``dim_param``) get one
        value.

    Raises:
        UserError: a requested name is not an input, its rank differs, or it contradicts a
            fixed dim.
    """
    inputs = graph_inputs(model)
    names = [i.name for i in inputs]
    for name in requested:
        if name not in names:
            raise UserError(
                f"--shape names {name!r}, which is not an input of the model; inputs: "
                + ", ".join(names)
            )
    symbols: dict[str, int] = {}
    # First pass: learn symbolic dim values from user shapes, so unbound inputs that share a
    # symbol (e.g. "batch") get the same value.
    for value in inputs:
        if value.name not in requested:
            continue
        dims = value.type.tensor_type.shape.dim
        user = requested[value.name]
        if value.type.tensor_type.HasField("shape") and len(dims) != len(user):
            raise UserError(
                f"--shape {value.name}={'x'.join(map(str, user))} has rank {len(user)}, "
                f"but the model's input has rank {len(dims)}"
            )
        for axis, (dim, size) in enumerate(zip(dims, user, strict=False)):
            if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != size:
                raise UserError(
                    f"--shape {value.name}: axis {axis} is fixed to {dim.dim_value} in the model, "
                    f"got {size}"
                )
            if dim.HasField("dim_param") and dim.dim_param:
                symbols.setdefault(dim.dim_param, size)
    bound: list[InputSpec] = []
    notes: list[str] = []
    for value in inputs:
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise UserError(
                f"input {value.name!r} is not a tensor; only tensor inputs are supported"
            )
        if value.name in requested:
            bound.append(InputSpec(value.name, tensor_type.elem_type, requested[value.name]))
            continue
        if not tensor_type.HasField("shape"):
            raise UserError(
                f"input {value.name!r} has no declared shape: pass --shape {value.name}=..."
            )
        shape: list[int] = []
        for axis, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(dim.dim_value)
            elif dim.dim_param and dim.dim_param in symbols:
                shape.append(symbols[dim.dim_param])
            else:
                label = dim.dim_param or f"axis {axis}"
                notes.append(
                    f"input {value.name!r}: dynamic dim {label!r} not given, using "
                    f"{DEFAULT_DYNAMIC_DIM} (set it with --shape {value.name}=...)"
                )
                if dim.dim_param:
                    symbols[dim.dim_param] = DEFAULT_DYNAMIC_DIM
                shape.append(DEFAULT_DYNAMIC_DIM)
        bound.append(InputSpec(value.name, tensor_type.elem_type, tuple(shape)))
    return BoundInputs(tuple(bound), tuple(notes))


def with_bound_inputs(model: onnx.ModelProto, bound: BoundInputs) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs carry the concrete bound shapes."""
    fixed = copy.deepcopy(model)
    shapes = bound.shapes()
    for value in fixed.graph.input:
        if value.name not in shapes:
            continue
        dims = value.type.tensor_type.shape
        dims.ClearField("dim")
        for size in shapes[value.name]:
            dims.dim.add().dim_value = size
    return fixed


def _known_shape(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    dims = value.type.tensor_type.shape.dim
    if all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
        return tuple(d.dim_value for d in dims)
    return None


def infer_tensor_shapes(
    model: onnx.ModelProto, bound: BoundInputs, required: Iterable[str] = ()
) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of the model's tensors at the bound input shapes.

    ONNX shape inference (with data propagation) is tried first; tensors in ``required`` that it
    cannot resolve (Reshape from computed shapes, custom ops) are measured by one ONNX Runtime run
    on synthetic inputs.
    """
    fixed = with_bound_inputs(model, bound)
    shapes: dict[str, tuple[int, ...]] = dict(bound.shapes())
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
        for value in [*inferred.graph.value_info, *inferred.graph.output]:
            known = _known_shape(value)
            if known is not None:
                shapes[value.name] = known
    except Exception as exc:  # noqa: BLE001 - inference failures only mean we measure instead
        logger.debug("onnx shape inference failed: %s", exc)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    missing = [name for name in required if name not in shapes]
    if missing:
        shapes.update(measure_tensor_shapes(fixed, bound, missing))
    return shapes


def measure_tensor_shapes(
    model: onnx.ModelProto, bound: BoundInputs, names: Iterable[str]
) -> dict[str, tuple[int, ...]]:
    """Shapes of ``names`` from one ORT run on synthetic inputs at the bound shapes."""
    from onnxprune.common.runtime import make_session, synthetic_feed

    names = list(dict.fromkeys(names))
    probe = copy.deepcopy(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    from onnxprune.graph.load import stamp_ir_version

    try:
        session = make_session(stamp_ir_version(probe))
        outputs = session.run(names, synthetic_feed(bound.as_tuples()))
    except Exception as exc:  # noqa: BLE001 - any ORT failure here is a model/shape problem
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"ONNX Runtime cannot run the model at the input shapes "
            f"{ {k: 'x'.join(map(str, v)) for k, v in bound.shapes().items()} }: {first}"
        ) from None
    return {name: tuple(np.shape(value)) for name, value in zip(names, outputs, strict=True)}
