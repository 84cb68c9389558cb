"""The whole-model profile the table rests on: cached by content, checked against fresh runs.

Step 1 of :mod:`onnxprune.latency.build`. The profile decides the base time, hence every budget
and bound; it is cached by the model's bytes, the deployment shapes and the environment
(:func:`_cached_profile`), and checked against the dense model timed now
(:func:`_consistent_profile`), since one burst of load during profiling would otherwise be kept
forever. Apart from :mod:`~onnxprune.latency.profile`, which takes one profile and knows nothing
of caches or of the table.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import onnx

from onnxprune.common.runtime import RuntimeConfig, synthetic_feed
from onnxprune.graph.candidates import GraphAnalysis
from onnxprune.latency.cache import TimingCache, _model_digest, fingerprint
from onnxprune.latency.profile import (
    ModelProfile,
    median_over_sessions,
    profile_model,
    profiler_inflation,
)

logger = logging.getLogger("onnxprune")

_PROFILE_TOLERANCE = 1.15


def _consistent_profile(
    profile: ModelProfile,
    model: onnx.ModelProto,
    analysis: GraphAnalysis,
    runtime: RuntimeConfig,
    cache: TimingCache,
    env: Mapping,
) -> tuple[ModelProfile, float]:
    """Check the profile's whole-model time against fresh timings of the dense model.

    Returns the profile and the relative spread (MAD) of the dense time over fresh sessions.

    One burst of load from elsewhere during profiling inflates the measured total, hence the base
    time, hence every budget and bound derived from it — and a cached profile would keep that
    error forever. The dense model is timed in three fresh sessions (median of their medians); a
    profile more than 15% slower than the model runs now is taken again (and
    the cache overwritten); since load only ever makes runs slower, the smaller total is kept.
    """
    from onnxprune.graph.load import stamp_ir_version

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    timing = median_over_sessions(stamp_ir_version(probe).SerializeToString(),
                                  synthetic_feed(analysis.bound.as_tuples()), runtime)
    fresh = timing.median_s
    profiled = max(profile.total_s, profile.kernel_sum_s)
    if profiled > fresh * _PROFILE_TOLERANCE:
        logger.warning(
            "the whole-model profile says %.3f ms but the model runs in %.3f ms now (other load "
            "on the machine?); profiling again", profiled * 1e3, fresh * 1e3,
        )
        profile = _cached_profile(model, analysis, runtime, cache, env, refresh=True)
    if fresh < profile.total_s:
        profile = dataclasses.replace(profile, total_s=fresh)
    return profile, timing.mad_s / fresh if fresh > 0 else 0.0


def _cached_profile(
    model: onnx.ModelProto,
    analysis: GraphAnalysis,
    runtime: RuntimeConfig,
    cache: TimingCache,
    env: Mapping,
    refresh: bool = False,
) -> ModelProfile:
    meta = {
        "env": env,
        "what": "model_profile",
        "model": _model_digest(model),
        "inputs": analysis.bound.as_tuples(),
    }
    key = fingerprint(meta)
    hit = None if refresh else cache.get(key, meta)
    if hit is not None:
        try:
            return ModelProfile.from_json(hit)
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("ignoring corrupt cached profile (%s); re-profiling", exc)
    inflation_meta = {"env": env, "what": "profiler_inflation"}
    inflation_key = fingerprint(inflation_meta)
    inflation = cache.get(inflation_key, inflation_meta)
    if inflation is None or "seconds" not in inflation:
        inflation = {"seconds": profiler_inflation(runtime)}
        cache.put(inflation_key, inflation_meta, inflation)
    profile = profile_model(model, analysis.bound, runtime, inflation_s=float(inflation["seconds"]))
    cache.put(key, meta, profile.to_json())
    return profile
