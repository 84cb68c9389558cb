"""From isolated to in-graph time: the fixed base, the global correction, in-graph savings.

Isolated and in-graph times differ (fused bias/activation epilogues, warm caches, thread-pool
wake-ups). The whole-model profile says what the candidates cost inside the graph, and the
functions here tie the table's isolated option times to it (step 3 of
:mod:`onnxprune.latency.build`): :func:`_base_and_scale` (the fixed time and one global factor),
:func:`_structures_in_graph` (a structure's saving from its profiled nodes) and
:func:`_shared_in_context` (many-site weights, measured inside the whole model by
:mod:`~onnxprune.latency.in_context`). They are the table's model of the graph, not its
measurement loop, hence a module apart from the builder.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import onnx

from onnxprune.common.runtime import RuntimeConfig, synthetic_feed
from onnxprune.graph.candidates import GraphAnalysis
from onnxprune.latency import in_context
from onnxprune.latency.cache import TimingCache, _model_digest, fingerprint
from onnxprune.latency.measure import RatioTiming
from onnxprune.latency.profile import ModelProfile
from onnxprune.latency.table import CandidateLatency
from onnxprune.layouts.base import DENSE, LayoutOption

logger = logging.getLogger("onnxprune")


def _base_and_scale(
    profile: ModelProfile, entries: Sequence[CandidateLatency], to_total: float
) -> tuple[float, float]:
    """Fixed time and the isolated→in-graph correction (see :mod:`onnxprune.latency.build`).

    ``to_total`` scales profiled kernel seconds to the unprofiled total
    (:meth:`ModelProfile.to_total`): a profile or a total from a disturbed session would
    otherwise move time between the prunable and the fixed part.

    Candidates whose nodes the profiler did not map contribute their *corrected* isolated time
    to the prunable part instead of a profiled one, so the base is not inflated by them.
    """
    mapped = [e for e in entries if e.profiled_s is not None]
    unmapped = [e for e in entries if e.profiled_s is None]
    profiled = to_total * sum(e.profiled_s for e in mapped)  # type: ignore[misc]
    isolated = sum(e.dense_s for e in mapped)
    scale = profiled / isolated if profiled > 0 and isolated > 0 else 1.0
    if unmapped:
        logger.warning(
            "the profiler did not map %d candidate(s) (%s); their in-graph time is estimated "
            "from isolation",
            len(unmapped),
            ", ".join(e.name for e in unmapped[:5]),
        )
    if profiled <= 0 < isolated:
        # Kernels too short to survive the profiler's inflation correction (microsecond nodes):
        # nothing was attributed, so isolation alone says what the candidates cost.
        profiled = isolated
    prunable = profiled + scale * sum(e.dense_s for e in unmapped)
    base = profile.total_s - prunable
    if base < 0:
        logger.warning(
            "profiled candidate time (%.3f ms) exceeds the measured total (%.3f ms); base set "
            "to 0 and the correction scaled to match",
            prunable * 1e3,
            profile.total_s * 1e3,
        )
        total_isolated = sum(e.dense_s for e in entries)
        scale = profile.total_s / total_isolated if total_isolated > 0 else 1.0
        base = 0.0
    return base, scale


def _structures_in_graph(
    entries: list[CandidateLatency], analysis: GraphAnalysis,
    per_candidate: Mapping[str, list[tuple[LayoutOption, list[str]]]],
    ratios: Mapping[str, RatioTiming], savings: Mapping[str, float], profile: ModelProfile,
    scale: float, to_total: float,
) -> list[CandidateLatency]:
    """Express each structure option's saving in in-graph time, consistent with the total.

    Isolated, a structure saves ``(1 − r)·t_sub`` where ``r`` is its interleaved time ratio
    against the dense subgraph (robust) and ``t_sub`` the dense subgraph's isolated time (not:
    it moves with the session, and a structure at its narrowest saves almost all of it, so the
    Amdahl bound — the whole time over what little is left — moved 2x between runs). The
    profile measured the same nodes inside the whole model, and its shares are scaled to the
    total (``to_total``, as for the base time), so the saving used is
    ``(1 − r)·to_total·Σ profiled time of the structure's nodes`` (divided by the table's
    correction factor, since option times are scaled by it). Where the profiler did not map the
    structure's nodes, the isolated saving stays.
    """
    by_name = {c.name: c for c in analysis.candidates}
    fixed = []
    for entry in entries:
        cand = by_name.get(entry.name)
        context = cand.structure if cand is not None else None
        in_graph = (to_total * profile.nodes_time(context.structure.nodes)
                    if context is not None else 0.0)
        if context is None or in_graph <= 0 or scale <= 0:
            fixed.append(entry)
            continue
        keys_of = dict(per_candidate[entry.name])
        rows = []
        for option, seconds in entry.options:
            keys = keys_of.get(option, [])
            if option.layout == "structure" and keys and all(k in savings for k in keys):
                isolated = sum(savings[k] for k in keys)
                graph = sum((1.0 - ratios[k].ratio) * in_graph / scale for k in keys)
                seconds = seconds + isolated - graph
            rows.append((option, seconds))
        fixed.append(dataclasses.replace(entry, options=tuple(rows)))
    return fixed


def _shared_in_context(
    entries: list[CandidateLatency], model: onnx.ModelProto, analysis: GraphAnalysis,
    scale: float, total_s: float, runtime: RuntimeConfig, cache: TimingCache, env: Mapping,
) -> list[CandidateLatency]:
    """Scale each many-site candidate's savings by what a few of them save in the whole model.

    See :mod:`onnxprune.latency.in_context`.
    """
    shared = {c.name: c for c in in_context.shared_candidates(analysis.candidates)}
    if not shared:
        return entries
    digest = _model_digest(model)
    feed = synthetic_feed(analysis.bound.as_tuples())

    def meta(name: str, option: LayoutOption) -> dict:
        return {"env": env, "what": "in_context_ratio", "model": digest, "candidate": name,
                "option": option.to_json(), "inputs": analysis.bound.as_tuples()}

    def cached(name: str, option: LayoutOption) -> float | None:
        hit = cache.get(fingerprint(meta(name, option)), meta(name, option))
        return float(hit["ratio"]) if hit and "ratio" in hit else None

    def store(name: str, option: LayoutOption, ratio: float) -> None:
        cache.put(fingerprint(meta(name, option)), meta(name, option), {"ratio": ratio})

    fixed = []
    for entry in entries:
        cand = shared.get(entry.name)
        if cand is None:
            fixed.append(entry)
            continue
        dense = entry.dense_s
        sampled = in_context.sample_options(entry.options)
        predicted = {o: scale * (dense - entry.raw_time(o)) for o in sampled}
        factor, _ = in_context.saving_factor(model, analysis.candidates, cand, predicted,
                                             total_s, feed, runtime, cached, store)
        rows = tuple((o, t if o == DENSE else dense - factor * (dense - t))
                     for o, t in entry.options)
        fixed.append(dataclasses.replace(entry, options=rows))
    return fixed
