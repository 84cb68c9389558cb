"""Calibration data: read once into a :class:`CalibSet`, checked against the model.

Sources, all reduced to a list of feed dicts:

* a folder of ``.npz`` batches keyed by input name (the format of ``calibration/``; keys starting
  with ``__`` are metadata, ``__labels__`` holds class labels);
* a folder of one ``.npy`` per input (``<input name>.npy``, samples first), cut into batches;
* any object with ``get_next()`` — ONNX Runtime's ``CalibrationDataReader`` protocol — reached via
  ``--calib-reader module:callable``, so quantization users can reuse their readers.

Readers are single-pass, but pruning needs several passes (statistics, search scoring), so the
data is read once, capped at ``max_samples``, and kept in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import onnx

from onnxprune.common.errors import UserError
from onnxprune.common.runtime import np_dtype
from onnxprune.graph.shapes import graph_inputs

logger = logging.getLogger("onnxprune")

LABELS_KEY = "__labels__"
NPY_BATCH = 32


@runtime_checkable
class CalibrationReader(Protocol):
    """ONNX Runtime's reader contract: ``get_next()`` returns a feed dict, or None at the end."""

    def get_next(self) -> Mapping[str, np.ndarray] | None: ...


@dataclass(frozen=True)
class CalibSet:
    """Calibration batches held in memory.

    Attributes:
        batches: feed dicts (input name -> array, batch first).
        labels: per batch, int64 labels or None.
        source: where the data came from, for messages.
    """

    batches: tuple[dict[str, np.ndarray], ...]
    labels: tuple[np.ndarray | None, ...]
    source: str

    @property
    def samples(self) -> int:
        return sum(_batch_size(b) for b in self.batches)

    @property
    def has_labels(self) -> bool:
        return bool(self.labels) and all(lab is not None for lab in self.labels)

    def partition(self, search: float = 0.25, verify: float = 0.25
                  ) -> tuple[CalibSet, CalibSet, CalibSet]:
        """(fit, search, verify): three disjoint parts, in that order of the data.

        ``fit`` feeds the layer statistics (Hessians), ``search`` scores allocations (SPDY's
        search, the fidelity-bound search), ``verify`` is held out for the final fidelity check,
        which no choice has seen. With at least 4 batches whole batches are assigned; otherwise
        every batch is cut along its samples. With fewer than 3 samples the parts cannot be
        disjoint and all three are the whole set (the report says so via :attr:`samples`).
        """
        if self.samples < 3:
            return self, self, self
        batches, labels = list(self.batches), list(self.labels)
        fractions = (1.0 - search - verify, search, verify)
        if len(batches) >= 4:
            sizes = [_batch_size(b) for b in batches]
            total, bounds, acc = sum(sizes), [], 0.0
            for fraction in fractions[:-1]:
                acc += fraction
                bounds.append(acc * total)
            parts: list[list[int]] = [[], [], []]
            seen = 0
            for index, size in enumerate(sizes):
                middle = seen + size / 2
                part = sum(middle > bound for bound in bounds)
                parts[part].append(index)
                seen += size
            for part in range(3):  # no part may be empty: borrow the nearest batch
                if not parts[part]:
                    donor = max(range(3), key=lambda p: len(parts[p]))
                    parts[part].append(parts[donor].pop(0 if part > donor else -1))
            return tuple(  # type: ignore[return-value]
                CalibSet(tuple(batches[i] for i in sorted(idx)),
                         tuple(labels[i] for i in sorted(idx)), self.source)
                for idx in parts
            )
        cut: list[list[tuple[dict[str, np.ndarray], np.ndarray | None]]] = [[], [], []]
        for feed, lab in zip(batches, labels, strict=True):
            size = _batch_size(feed)
            ends = [round(size * fractions[0]), round(size * (fractions[0] + fractions[1])), size]
            ends[0] = min(max(ends[0], 1), size - 2) if size >= 3 else ends[0]
            ends[1] = min(max(ends[1], ends[0] + 1), size - 1) if size >= 3 else ends[1]
            start = 0
            for part, end in enumerate(ends):
                if end > start:
                    cut[part].append(({k: v[start:end] for k, v in feed.items()},
                                      None if lab is None else lab[start:end]))
                start = end
        if not all(cut):
            return self, self, self
        return tuple(  # type: ignore[return-value]
            CalibSet(tuple(f for f, _ in items), tuple(lab for _, lab in items), self.source)
            for items in cut
        )

    def feed_at(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray] | None:
        """Real inputs at the deployment ``shapes``: samples stacked (repeated if too few).

        Timing on real data catches what synthetic data hides (denormals, data-dependent ops).
        Returns None when the samples' shapes beyond the batch axis differ from ``shapes``.
        """
        feed: dict[str, np.ndarray] = {}
        for name, shape in shapes.items():
            if not shape or any(name not in b for b in self.batches):
                return None
            parts = [np.asarray(b[name]) for b in self.batches]
            if any(p.ndim != len(shape) or tuple(p.shape[1:]) != tuple(shape[1:]) for p in parts):
                return None
            stacked = np.concatenate(parts, axis=0)
            if stacked.shape[0] == 0:
                return None
            reps = -(-shape[0] // stacked.shape[0])
            feed[name] = np.ascontiguousarray(np.concatenate([stacked] * reps)[:shape[0]])
        return feed


def _batch_size(feed: Mapping[str, np.ndarray]) -> int:
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.ndim else 1


def load_calib_dir(path: Path, max_samples: int) -> CalibSet:
    """Read a calibration folder (.npz batches, or one .npy per input)."""
    if not path.exists():
        raise UserError(f"calibration folder not found: {path}")
    if path.is_file() and path.suffix == ".npz":
        files = [path]
    elif path.is_dir():
        files = sorted(path.glob("*.npz"))
    else:
        raise UserError(f"--calib expects a folder of .npz or .npy files, got {path}")
    if files:
        return _cap(_read_npz(files), max_samples, str(path))
    npys = sorted(path.glob("*.npy"))
    if not npys:
        raise UserError(f"calibration folder {path} holds no .npz or .npy files")
    arrays = {f.stem: _load_array(f) for f in npys}
    labels = arrays.pop(LABELS_KEY, None)
    sizes = {name: a.shape[0] if a.ndim else 0 for name, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise UserError(f"the .npy files in {path} have different sample counts: {sizes}")
    total = next(iter(sizes.values()))
    batches, batch_labels = [], []
    for start in range(0, total, NPY_BATCH):
        batches.append({k: v[start:start + NPY_BATCH] for k, v in arrays.items()})
        batch_labels.append(None if labels is None else labels[start:start + NPY_BATCH])
    return _cap(zip(batches, batch_labels, strict=True), max_samples, str(path))


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"cannot read calibration file {path}: {exc}") from None


def _read_npz(files: Iterable[Path]) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
    for file in files:
        try:
            with np.load(file, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (ValueError, OSError, EOFError) as exc:
            raise UserError(f"cannot read calibration file {file}: {exc}") from None
        labels = arrays.pop(LABELS_KEY, None)
        feed = {k: v for k, v in arrays.items() if not k.startswith("__")}
        if not feed:
            raise UserError(f"calibration file {file} holds no input arrays")
        yield feed, labels


def _cap(
    items: Iterable[tuple[Mapping[str, np.ndarray], np.ndarray | None]], max_samples: int,
    source: str,
) -> CalibSet:
    batches: list[dict[str, np.ndarray]] = []
    labels: list[np.ndarray | None] = []
    total = 0
    for feed, lab in items:
        feed = {k: np.asarray(v) for k, v in feed.items()}
        size = _batch_size(feed)
        take = min(size, max_samples - total)
        if take <= 0:
            break
        if take < size:
            feed = {k: v[:take] for k, v in feed.items()}
            lab = None if lab is None else lab[:take]
        batches.append(feed)
        labels.append(None if lab is None else np.asarray(lab).astype(np.int64).reshape(-1))
        total += take
    if not batches:
        raise UserError(f"no calibration samples in {source}")
    return CalibSet(tuple(batches), tuple(labels), source)


def load_calib_reader(spec: str, max_samples: int) -> CalibSet:
    """Import ``module:callable`` (or ``file.py:callable``), call it, drain the returned reader."""
    from onnxprune.common.plugin import import_attribute

    factory = import_attribute(spec, "--calib-reader")
    reader = factory() if callable(factory) and not hasattr(factory, "get_next") else factory
    if not isinstance(reader, CalibrationReader):
        raise UserError(f"--calib-reader: {spec} did not return an object with get_next()")
    return read_calib_reader(reader, max_samples, spec)


def read_calib_reader(reader: CalibrationReader, max_samples: int,
                      source: str | None = None) -> CalibSet:
    """Drain an ORT-style reader (any object with ``get_next()``) into a :class:`CalibSet`.

    The Python API's ``calibration_data_reader`` comes here directly; ``--calib-reader`` after
    importing its factory.
    """
    if not isinstance(reader, CalibrationReader):
        raise UserError(f"calibration_data_reader: {type(reader).__name__} has no get_next() "
                        "(ONNX Runtime's CalibrationDataReader protocol)")

    def drain() -> Iterator[tuple[Mapping[str, np.ndarray], None]]:
        while (feed := reader.get_next()) is not None:
            yield dict(feed), None

    return _cap(drain(), max_samples, source or f"reader {type(reader).__name__}")


def check_against_model(calib: CalibSet, model: onnx.ModelProto) -> CalibSet:
    """Check names, dtypes and ranks/fixed dims against the model's inputs.

    Floating data of another float width is cast (a float64 .npy is common); anything else that
    does not match is a :class:`UserError` naming the input.
    """
    specs = {v.name: v for v in graph_inputs(model)}
    fixed_batches = []
    for index, feed in enumerate(calib.batches):
        missing = [name for name in specs if name not in feed]
        if missing:
            raise UserError(
                f"calibration data ({calib.source}, batch {index}) lacks model input(s) "
                f"{', '.join(missing)}; it has {', '.join(feed) or 'nothing'}"
            )
        fixed: dict[str, np.ndarray] = {}
        for name, value in specs.items():
            array = feed[name]
            tensor_type = value.type.tensor_type
            want = np_dtype(tensor_type.elem_type)
            if array.dtype != want:
                same_kind = (np.issubdtype(array.dtype, np.floating)
                             and np.issubdtype(want, np.floating)) or (
                    np.issubdtype(array.dtype, np.integer) and np.issubdtype(want, np.integer))
                if not same_kind:
                    raise UserError(
                        f"calibration input {name!r} has dtype {array.dtype}, the model expects "
                        f"{want}"
                    )
                array = array.astype(want)
            dims = tensor_type.shape.dim if tensor_type.HasField("shape") else None
            if dims is not None:
                if len(dims) != array.ndim:
                    raise UserError(
                        f"calibration input {name!r} has shape {list(array.shape)}, the model "
                        f"expects rank {len(dims)}"
                    )
                for axis, (dim, size) in enumerate(zip(dims, array.shape, strict=True)):
                    if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != size:
                        raise UserError(
                            f"calibration input {name!r} has size {size} on axis {axis}, the "
                            f"model expects {dim.dim_value}"
                        )
            fixed[name] = array
        fixed_batches.append(fixed)
    return CalibSet(tuple(fixed_batches), calib.labels, calib.source)
