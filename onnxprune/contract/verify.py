"""Checking the output model: exact against the masked-dense model.

Before anything is written, the materialized model's outputs must equal the stitched model fed
the same pruned weights (masked-dense computation), on real calibration inputs when there are
some and synthetic ones otherwise. Its speed is checked separately, by
:func:`onnxprune.latency.measure.bench_sessions` (the same measurement ``onnxprune bench`` makes),
from :meth:`onnxprune.contract.attempt.Realizer.measure`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx

from onnxprune.calib.stitch import StitchedRunner
from onnxprune.common.runtime import make_session

logger = logging.getLogger("onnxprune")


class MaterializationMismatchError(RuntimeError):
    """The rewritten graph does not compute what the masked-dense model computes (a bug)."""


def check_exact(
    pruned: onnx.ModelProto,
    reference: StitchedRunner,
    weights: Mapping[str, np.ndarray],
    feed: Mapping[str, np.ndarray],
    rtol: float = 1e-3,
) -> float:
    """Max normalized output difference of ``pruned`` vs masked-dense; raises above ``rtol``.

    The difference is ‖a − b‖∞ / max(‖b‖∞, 1e-6) per float output, so it is meaningful for
    logits and probabilities alike.
    """
    session = make_session(pruned)
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, dict(feed)), strict=True))
    want = reference.run(feed, weights, outputs=names)
    worst = 0.0
    for name in names:
        a, b = np.asarray(got[name]), np.asarray(want[name])
        if a.shape != b.shape:
            raise MaterializationMismatchError(
                f"output {name!r}: shape {a.shape} after rewriting, {b.shape} before")
        if not np.issubdtype(b.dtype, np.floating):
            continue
        scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-6)
        worst = max(worst, float(np.max(np.abs(a - b))) / scale if b.size else 0.0)
    if worst > rtol:
        raise MaterializationMismatchError(
            f"the rewritten model differs from the masked-dense model by {worst:.2e} (relative); "
            "this is a bug in onnxprune, please report it"
        )
    return worst


def graph_without_values(model: onnx.ModelProto) -> bytes:
    """``model`` serialized with every initializer's values dropped (names, types, shapes kept)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        for field_name in ("float_data", "int32_data", "int64_data", "double_data",
                           "uint64_data", "string_data"):
            init.ClearField(field_name)
        init.ClearField("raw_data")
    return copy.SerializeToString(deterministic=True)


def require_same_graph(reference: onnx.ModelProto, tuned: onnx.ModelProto) -> None:
    """Raise unless ``tuned`` equals ``reference`` except for initializer values: global
    recovery may change numbers only, never the graph a user deploys."""
    if graph_without_values(reference) != graph_without_values(tuned):
        raise MaterializationMismatchError(
            "the recovered model's graph differs from the one-shot model's (only initializer "
            "values may change)")
