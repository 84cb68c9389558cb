"""The on-disk timing cache, and what its keys are made of.

Every number the latency stage measures (isolated timings, the whole-model profile, the per-run
overhead, in-context ratios, the bound's sessions) is kept as one JSON file per entry in
``cache_dir`` (default ``platformdirs.user_cache_dir("onnxprune")/latency``), named by a
fingerprint: a hash of the machine (CPU model, core count; GPU model for CUDA/TensorRT), the EP and
its options, the thread count, the onnxruntime version, the timing method
(:data:`TIMING_SCHEMA`), and what was timed. Any change gives a new name, so stale numbers are
never reused; a corrupt file is ignored (and rewritten) with a log message.

A module of its own, at the bottom of the package: the table builder and the bound's measurement
(:mod:`~onnxprune.latency.anchor`) share this cache, and neither should import the other for it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.common.runtime import RuntimeConfig

logger = logging.getLogger("onnxprune")

# Bump when the way timings are taken changes, so old cache entries are not reused.
TIMING_SCHEMA = 3  # 2: no thread spinning; 3: options timed against their dense reference


def default_cache_dir() -> Path:
    """``platformdirs.user_cache_dir("onnxprune")/latency``."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("onnxprune")) / "latency"


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def _gpu_models() -> tuple[str, ...]:
    models = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            for line in info.read_text().splitlines():
                if line.startswith("Model:"):
                    models.append(line.split(":", 1)[1].strip())
        except OSError:
            continue
    return tuple(models)


def runtime_environment(runtime: RuntimeConfig) -> dict[str, object]:
    """What a timing depends on besides the node itself (part of every cache key)."""
    env: dict[str, object] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
        "provider": runtime.provider,
        "provider_options": dict(sorted((runtime.provider_options or {}).items())),
        "threads": runtime.threads,
        "onnxruntime": ort.__version__,
        "timing_schema": TIMING_SCHEMA,
    }
    if runtime.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        env["gpu"] = list(_gpu_models())
    return env


def fingerprint(*parts: object) -> str:
    """Stable hex digest of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=_jsonable, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _jsonable(value: object) -> object:
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


class TimingCache:
    """One JSON file per entry in ``folder``, named by the entry's fingerprint.

    Every file stores its full key, which is compared on read; files that cannot be read or do not
    match are ignored with a log message. Writes are atomic (temporary file, then rename).
    """

    def __init__(self, folder: Path | None, read: bool = True) -> None:
        self.folder = folder
        self.read = read

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{key}.json"

    def get(self, key: str, meta: Mapping) -> dict | None:
        if self.folder is None or not self.read:
            return None
        path = self._path(key)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("meta") != json.loads(json.dumps(meta, default=_jsonable)):
                logger.info("latency cache entry %s does not match its key; re-measuring", path)
                return None
            return data["value"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("ignoring corrupt latency cache file %s (%s); re-measuring", path, exc)
            return None

    def put(self, key: str, meta: Mapping, value: Mapping) -> None:
        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            payload = json.dumps({"meta": meta, "value": value}, default=_jsonable, indent=1)
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.folder)
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(payload)
                os.replace(tmp, self._path(key))
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("cannot write latency cache in %s (%s); continuing", self.folder, exc)


def _model_digest(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()[:32]
