"""Loading and saving models safely.

Every user-facing mistake (missing file, not ONNX, truncated, external data escaping the model's
folder) becomes a :class:`UserError` with one line of explanation. Saving lives in
:mod:`onnxprune.graph.write` (re-exported here): it never leaves a half-written output.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from onnxprune.common.errors import UserError
from onnxprune.graph.toposort import toposort_graph
from onnxprune.graph.write import save_model_atomic

__all__ = ["load_model", "ort_max_ir_version", "save_model_atomic", "stamp_ir_version"]

logger = logging.getLogger("onnxprune")


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX model with its external data, refusing unsafe or broken files.

    Args:
        path: the ``.onnx`` file.

    Returns:
        The model, with external tensors loaded into memory.

    Raises:
        UserError: the file is missing, not an ONNX model, truncated, or its external data is
            missing or points outside the model's folder.
    """
    model_path = Path(path)
    if not model_path.exists():
        raise UserError(f"no such file: {model_path}")
    if model_path.is_dir():
        raise UserError(f"{model_path} is a directory, not an ONNX file")
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise UserError(f"{model_path} is not a valid ONNX model (cannot parse: {exc})") from None
    if model.ir_version <= 0 or not model.graph.output or not model.graph.node:
        raise UserError(f"{model_path} is not a valid ONNX model (no graph, outputs or nodes)")
    _load_external_data(model, model_path)
    if toposort_graph(model.graph):
        # ORT sorts the nodes itself and runs such a model; so must we (e.g. the output of
        # onnxruntime's float16 converter lists its input Casts last).
        logger.info("%s: nodes were not in topological order; sorted them", model_path)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise UserError(f"{model_path} is not a valid ONNX model: {first_line}") from None
    return model


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The tensors of ``model`` (subgraphs included) whose data lives in external files."""
    return [
        t for t in external_data_helper._get_all_tensors(model)
        if external_data_helper.uses_external_data(t)
    ]


def _load_external_data(model: onnx.ModelProto, model_path: Path) -> None:
    """Resolve every external-data location inside the model's folder, then load it."""
    tensors = external_tensors(model)
    if not tensors:
        return
    base = model_path.resolve().parent
    for tensor in tensors:
        info = external_data_helper.ExternalDataInfo(tensor)
        location = info.location
        if not location or os.path.isabs(location):
            raise UserError(
                f"tensor {tensor.name!r} has external data at {location!r}: only paths relative to "
                f"the model's folder are accepted"
            )
        target = (base / location).resolve()
        if not target.is_relative_to(base):
            raise UserError(
                f"tensor {tensor.name!r} has external data at {location!r}, which is outside the "
                f"model's folder {base}; refusing to read it"
            )
        if not target.is_file():
            raise UserError(f"external data file {location!r} of tensor {tensor.name!r} is missing")
    try:
        external_data_helper.load_external_data_for_model(model, str(base))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read external data of {model_path}: {exc}") from None


@functools.lru_cache(maxsize=1)
def ort_max_ir_version() -> int:
    """The highest ONNX IR version the installed ONNX Runtime accepts (probed once).

    onnx 1.23 writes IR 14 by default while ORT 1.31 reads at most 13, so every model we build or
    rewrite is stamped with this version.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    for ir in range(onnx.IR_VERSION, 6, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = ir
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - ORT raises several types for "unsupported IR"
            continue
        return ir
    return 8


def stamp_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    """Lower the model's IR version to what the installed ORT reads (never raise it)."""
    model.ir_version = min(model.ir_version, ort_max_ir_version())
    return model
