"""Writing a model so that a kill at any moment leaves the old output or the new one, never half.

The ``.onnx`` file is written to a temporary file in the output's folder and renamed over the
output (``os.replace`` is atomic within one file system). A model with external data is two files
that must change together, which no rename can do; instead every write gets a *new* data file
name, ``<out>.<token>.data``, written completely (and synced) before the ``.onnx`` that points to
it is renamed into place. Until that rename the old ``.onnx`` still points to its own, untouched
data file; after it, the new one points to a complete file. Data files of earlier writes are
removed only after the rename. A kill can leave a stray hidden ``.tmp`` or an unreferenced
``.data`` file behind, never a model that points to a missing or partial one; the next write of the
same output removes stray data files.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
from pathlib import Path

import onnx
from onnx import TensorProto, external_data_helper

logger = logging.getLogger("onnxprune")

EXTERNAL_DATA_ABOVE = 1_900_000_000
"""Models larger than this (bytes) keep their weights in an external data file: protobuf cannot
serialize a message over 2 GiB."""

MIN_EXTERNAL_TENSOR = 1024
"""Tensors with fewer raw bytes stay inside the ``.onnx`` (shape constants, indices)."""


def _sync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(payload: bytes, path: Path, mode: int | None = None) -> None:
    """Write ``payload`` to ``path`` through a synced temporary file in the same folder
    (permissions ``mode`` when given; ``mkstemp``'s 0600 otherwise)."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    _sync_dir(path.parent)


def _data_files_of(out: Path) -> list[Path]:
    """Data files an earlier write of ``out`` may have left (``<out>.<16 hex>.data``)."""
    pattern = re.compile(re.escape(out.name) + r"\.[0-9a-f]{16}\.data")
    return [p for p in out.parent.iterdir() if pattern.fullmatch(p.name)]


def _write_with_external_data(model: onnx.ModelProto, out: Path) -> str:
    """Weights to a fresh data file, then the ``.onnx`` pointing to it; returns the data name.

    The model is changed only while it is serialized: its tensors get their raw bytes back.
    """
    data_name = f"{out.name}.{secrets.token_hex(8)}.data"
    data_path = out.parent / data_name
    moved: list[tuple[TensorProto, bytes, bool]] = []
    try:
        with open(data_path, "xb") as handle:
            for tensor in external_data_helper._get_all_tensors(model):
                if len(tensor.raw_data) < MIN_EXTERNAL_TENSOR:
                    continue
                raw = tensor.raw_data
                offset = handle.tell()
                handle.write(raw)
                moved.append((tensor, raw, tensor.HasField("data_location")))
                external_data_helper.set_external_data(tensor, data_name, offset, len(raw))
                tensor.data_location = TensorProto.EXTERNAL
                tensor.ClearField("raw_data")
            handle.flush()
            os.fsync(handle.fileno())
        write_bytes_atomic(model.SerializeToString(), out)
    except BaseException:
        data_path.unlink(missing_ok=True)
        raise
    finally:
        for tensor, raw, had_location in moved:  # back exactly as it was
            del tensor.external_data[:]
            if had_location:
                tensor.data_location = TensorProto.DEFAULT
            else:
                tensor.ClearField("data_location")
            tensor.raw_data = raw
    return data_name


def save_model_atomic(model: onnx.ModelProto, path: str | os.PathLike[str],
                      external_data: bool | None = None) -> Path:
    """Write ``model`` to ``path`` so that a kill never leaves a partial output (module docstring).

    Args:
        model: the model, with all its weights in memory (it is not modified).
        path: the output ``.onnx``.
        external_data: True writes the weights to ``<name>.<token>.data`` next to the model;
            None does so only above :data:`EXTERNAL_DATA_ABOVE` bytes.

    Returns:
        The output path.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = model.ByteSize() > EXTERNAL_DATA_ABOVE
    keep = _write_with_external_data(model, out) if external_data else None
    if not external_data:
        write_bytes_atomic(model.SerializeToString(), out)
    for stale in _data_files_of(out):
        if stale.name != keep:
            stale.unlink(missing_ok=True)
    return out
