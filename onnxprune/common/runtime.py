"""ONNX Runtime sessions and synthetic inputs, made the same way everywhere.

Every stage (shape discovery, calibration, timing, verification) opens sessions through
:func:`make_session`, so provider names, thread counts and graph-optimization settings are decided
in one place and a timing taken by one stage is comparable with another's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnxprune.common.errors import UserError

logger = logging.getLogger("onnxprune")

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


def resolve_provider(name: str) -> str:
    """Map a short or full provider name to ORT's name, checking that it is installed.

    Raises:
        UserError: the provider is unknown or not offered by the installed onnxruntime.
    """
    full = PROVIDER_ALIASES.get(name.lower(), name)
    available = ort.get_available_providers()
    if full not in available:
        short = {v: k for k, v in PROVIDER_ALIASES.items()}
        names = ", ".join(f"{short.get(p, p)} ({p})" for p in available)
        raise UserError(
            f"execution provider {name!r} is not available in this onnxruntime "
            f"{ort.__version__}; available: {names}"
        )
    return full


@dataclass(frozen=True)
class RuntimeConfig:
    """How sessions are created: the user's EP, its options and the thread count."""

    provider: str = "CPUExecutionProvider"
    threads: int | None = None
    provider_options: Mapping[str, str] | None = None
    # ORT's intra-op threads spin after each run waiting for more work. onnxprune keeps several
    # sessions alive and alternates between them (A/B pairs, isolated nodes); spinning threads of
    # one session then steal the cores the other is running on: on 2 cores a model timed against
    # itself read 0.80x-1.18x (medians of 5 runs) with spinning, 0.99x-1.00x without
    # (benchmarks/spinning.py). Measurements therefore run without spinning.
    spinning: bool = False

    def providers(self) -> list:
        """Providers list for ``InferenceSession``, always with the CPU fallback last."""
        main: object = (self.provider, dict(self.provider_options or {}))
        if self.provider == "CPUExecutionProvider":
            return [main]
        return [main, "CPUExecutionProvider"]


def session_options(config: RuntimeConfig | None = None) -> ort.SessionOptions:
    """The ``SessionOptions`` every onnxprune session starts from (threads, quiet logging)."""
    config = config or RuntimeConfig()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if config.threads:
        options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
    if not config.spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def make_session(
    model: onnx.ModelProto | bytes, config: RuntimeConfig | None = None
) -> ort.InferenceSession:
    """Create an ``InferenceSession`` with the configured EP and threads (quiet logging)."""
    config = config or RuntimeConfig()
    options = session_options(config)
    payload = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(payload, sess_options=options, providers=config.providers())


def np_dtype(elem_type: int) -> np.dtype:
    """numpy dtype of an ONNX tensor element type."""
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def synthetic_feed(
    inputs: Sequence[tuple[str, int, tuple[int, ...]]], seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs for timing and shape discovery.

    Floats are standard normal; integers are zeros and booleans are True, which keeps index-like
    inputs (token ids, attention masks) in range for any model.

    Args:
        inputs: (name, ONNX element type, concrete shape) per graph input.
        seed: RNG seed, so repeated runs see identical data.
    """
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for name, elem_type, shape in inputs:
        dtype = np_dtype(elem_type)
        if np.issubdtype(dtype, np.floating):
            feed[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feed[name] = np.ones(shape, dtype=dtype)
        else:
            feed[name] = np.zeros(shape, dtype=dtype)
    return feed
