"""Building the latency table: profile, isolated timings, and the correction that ties them.

Built once per (model, deployment shapes, EP, threads) by :func:`build_latency_table`:

1. The whole model is profiled (:func:`onnxprune.latency.profile.profile_model`): its measured
   dense time ``T_dense`` (no profiler) and the profiled time of every candidate node.
   ``base = T_dense − Σ profiled candidate time`` is the part pruning cannot change, where the
   profiled times are the kernels' shares of ``T_dense`` less the run overhead
   (:meth:`~onnxprune.latency.profile.ModelProfile.to_total`: profile and total come from
   different sessions, which can run in different phases of a shared machine).
2. Every candidate × option is timed in isolation: the node alone at its real input shape,
   materialized with that option (``layouts.isolate``), on the EP with the user's threads. A
   candidate whose weight is shared by several nodes runs each of them, so its time is the sum
   over its sites. Timings are deduplicated by signature (op, attributes, weight and site shapes,
   option), so the six identical blocks of a transformer are timed once, and cached on disk.
   The fixed per-run cost of a session (:func:`onnxprune.latency.measure.run_overhead`) is
   subtracted from every isolated timing: the whole model pays it once, in its base time.
3. Isolated and in-graph times differ (fused bias/activation epilogues, warm caches, thread pool
   wake-ups). The gap is reported, and corrected with one global factor
   ``scale = Σ profiled candidate time / Σ isolated dense time`` applied to every option's time,
   so the all-dense prediction reproduces the measured dense time exactly and relative option
   costs keep what isolation measured. A global factor is used rather than one per candidate
   because per-node profiler times of small nodes are noisy (1 µs resolution) while their sum is
   not.

   ``predicted_total(assignment) = base + scale · Σ_c time_c(option_c)``
   ``amdahl_bound = T_dense / (base + scale · Σ_c min_option time_c)``

Every measurement is cached on disk (:mod:`onnxprune.latency.cache`). The builder's helpers sit
in modules of their own: the isolated models and their keys (:mod:`~onnxprune.latency.isolated`),
second looks at noisy timings (:mod:`~onnxprune.latency.refine`), the cached and checked profile
(:mod:`~onnxprune.latency.whole_model`) and the isolated→in-graph model of step 3
(:mod:`~onnxprune.latency.in_graph`); the table's types are :mod:`~onnxprune.latency.table`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from onnxprune.common.runtime import RuntimeConfig
from onnxprune.graph.candidates import Candidate, GraphAnalysis
from onnxprune.latency.cache import (
    TimingCache,
    default_cache_dir,
    fingerprint,
    runtime_environment,
)
from onnxprune.latency.in_graph import _base_and_scale, _shared_in_context, _structures_in_graph
from onnxprune.latency.isolated import (
    IsolatedBuilder,
    PairTimer,
    Timer,
    _default_isolated,
    _reference,
    _time_against,
    _timing_key,
    isolated_feed,
)
from onnxprune.latency.measure import RatioTiming, Timing, run_overhead, time_model
from onnxprune.latency.profile import ModelProfile
from onnxprune.latency.refine import _cache_still_holds, _refine_fastest
from onnxprune.latency.table import CandidateLatency, LatencyTable
from onnxprune.latency.whole_model import _cached_profile, _consistent_profile
from onnxprune.layouts.base import DENSE, LayoutOption
from onnxprune.layouts.registry import option_label

logger = logging.getLogger("onnxprune")

# Net isolated times never drop below this fraction of the raw timing (noise guard).
_NET_FLOOR = 0.02

Progress = Callable[[int, int, str], None]


def build_latency_table(
    model: onnx.ModelProto,
    analysis: GraphAnalysis,
    options: Mapping[str, Sequence[LayoutOption]],
    runtime: RuntimeConfig,
    *,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    progress: Progress | None = None,
    isolated: IsolatedBuilder | None = None,
    timer: Timer | None = None,
    pair_timer: PairTimer | None = None,
    profile: ModelProfile | None = None,
    refresh: bool = False,
) -> LatencyTable:
    """Measure the latency table of ``model`` on the EP (see the module docstring).

    Args:
        model: the model (unique node names, as the analysis saw it).
        analysis: its candidates at the deployment shapes.
        options: per candidate name, the options to time (dense is always timed too).
        runtime: EP, provider options and threads.
        cache_dir: cache folder (None: :func:`default_cache_dir`).
        use_cache: False to neither read nor write the cache.
        progress: called as ``progress(done, total, description)`` after every step.
        isolated: builds the isolated model of (candidate, option, site index); default
            ``layouts.isolate`` (dense: ``dense_isolated_model``).
        timer: times an isolated model; default :func:`~onnxprune.latency.measure.time_model`.
            When given (and ``pair_timer`` is not), options are timed alone with it and related
            to their site's dense timing.
        pair_timer: times an option against its site's dense model; default
            :func:`~onnxprune.latency.measure.time_ratio`.
        profile: a whole-model profile already taken (skips profiling).
        refresh: re-measure everything (the cache is written, not read).

    Returns:
        The table.
    """
    builder = isolated or _default_isolated
    injected_timer = timer
    timer = timer or time_model
    cache = TimingCache((cache_dir or default_cache_dir()) if use_cache else None,
                        read=not refresh)
    env = runtime_environment(runtime)
    env_key = fingerprint(env)

    # Unique isolated timings: signature key -> (candidate, site, option) that represents it.
    plan: dict[str, tuple[Candidate, int, LayoutOption, dict]] = {}
    dense_key: dict[str, str] = {}  # timing key -> the key of the same site's dense timing
    owner_key: dict[str, str] = {}  # structure option key -> its consumer site's dense key
    per_candidate: dict[str, list[tuple[LayoutOption, list[str]]]] = {}
    for candidate in analysis.candidates:
        wanted = [DENSE, *[o for o in options.get(candidate.name, ()) if o != DENSE]]
        wanted = list(dict.fromkeys(wanted))
        rows = []
        for option in wanted:
            keys = []
            for index in range(len(candidate.sites)):
                key, meta = _timing_key(env, builder, candidate, index, option)
                plan.setdefault(key, (candidate, index, option, meta))
                site_key = _timing_key(env, builder, candidate, index, DENSE)[0]
                if option.layout == "structure" and candidate.structure is not None:
                    # Timed against the structure's dense subgraph; saves from the site's time.
                    dense_key[key] = "structure:" + candidate.structure.signature
                    owner_key[key] = site_key
                else:
                    dense_key[key] = site_key
                keys.append(key)
            rows.append((option, keys))
        per_candidate[candidate.name] = rows

    total_steps = len(plan) + 2
    done = 0

    def step(description: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total_steps, description)

    # 1. Whole model: profile (cached by the model's content, the shapes and the environment).
    total_spread = 0.0
    if profile is None:
        profile = _cached_profile(model, analysis, runtime, cache, env)
        profile, total_spread = _consistent_profile(profile, model, analysis, runtime, cache, env)
    step("profiled the whole model")
    # 2. Per-run overhead.
    overhead_meta = {"env": env, "what": "run_overhead"}
    overhead_key = fingerprint(overhead_meta)
    cached = cache.get(overhead_key, overhead_meta)
    if cached is not None:
        overhead = Timing.from_json(cached)
    else:
        overhead = run_overhead(runtime)
        cache.put(overhead_key, overhead_meta, overhead.to_json())
    step("measured the per-run overhead")

    # 3. Isolated timings. Dense first: each site's dense model is the reference every option of
    # that site is then timed against, interleaved (time_ratio). A session's timing can sit
    # 10-30% off the next session's; interleaving cancels drift within a pair, and the site's
    # dense time becomes the median over all its pairs' reference runs — many fresh sessions.
    raw: dict[str, float] = {}
    ratios: dict[str, RatioTiming] = {}
    fresh_keys: set[str] = set()  # option timings measured now (cached once refined)
    failed: dict[str, str] = {}
    run_count = cached_count = 0
    ordered = sorted(plan.items(), key=lambda item: item[1][2] != DENSE)
    for key, (candidate, index, option, meta) in ordered:
        site = candidate.sites[index]
        hit = cache.get(key, meta)
        if hit is not None and (option == DENSE) == ("ratio" not in hit):
            if option == DENSE:
                raw[key] = Timing.from_json(hit).median_s
            else:
                ratios[key] = RatioTiming.from_json(hit)
            cached_count += 1
        else:
            try:
                isolated_model = builder(candidate, option, index)
                feed = isolated_feed(isolated_model, site.input_shape)
                if option == DENSE:
                    timing = timer(isolated_model, feed, runtime)
                    raw[key] = timing.median_s
                    cache.put(key, meta, timing.to_json())
                else:
                    reference = _reference(builder, candidate, option, index)
                    ratio = _time_against(reference, isolated_model, feed, runtime,
                                          injected_timer, pair_timer, raw.get(dense_key[key]))
                    ratios[key] = ratio
                    fresh_keys.add(key)
            except Exception as exc:
                if option == DENSE:
                    raise
                reason = _one_line(exc)
                logger.warning(
                    "cannot time %s on %s (%s); option dropped",
                    option_label(option),
                    candidate.name,
                    reason,
                )
                failed[key] = reason
                step(f"{candidate.op} {option_label(option)} failed")
                continue
            run_count += 1
        step(
            f"{candidate.op} {'x'.join(map(str, site.input_shape))}->"
            f"{'x'.join(map(str, site.output_shape))} {option_label(option)}"
        )
    if cached_count and not refresh and not _cache_still_holds(
            plan, raw, run_count, builder, timer, runtime):
        again = build_latency_table(
            model, analysis, options, runtime, cache_dir=cache_dir, use_cache=use_cache,
            progress=progress, isolated=isolated, timer=injected_timer, pair_timer=pair_timer,
            profile=profile, refresh=True)
        return dataclasses.replace(again, total_spread=total_spread)
    refined = _refine_fastest(plan, ratios, fresh_keys, dense_key, builder, runtime,
                              injected_timer, pair_timer, raw, cache)
    run_count += refined
    references: dict[str, list[float]] = {k: [v] for k, v in raw.items()}
    for key, ratio in ratios.items():
        references.setdefault(dense_key[key], []).append(ratio.reference_s)
    site_dense = {k: float(np.median(v)) for k, v in references.items()}
    savings: dict[str, float] = {}
    for key, ratio in ratios.items():
        if key in owner_key:
            savings[key] = site_dense[dense_key[key]] * (1.0 - ratio.ratio)
        else:
            raw[key] = ratio.ratio * site_dense[dense_key[key]]
    for key in list(raw):
        if key in site_dense:
            raw[key] = site_dense[key]

    def net(seconds: float) -> float:
        return max(seconds - overhead.median_s, _NET_FLOOR * seconds)

    def net_of(key: str) -> float:
        """Net seconds of a timing; a structure option is its site's time minus its saving."""
        if key in savings:
            return net(raw[owner_key[key]]) - savings[key]
        return net(raw[key])

    entries = []
    dropped: list[tuple[str, LayoutOption, str]] = []
    for candidate in analysis.candidates:
        rows_list, spreads = [], []
        for option, keys in per_candidate[candidate.name]:
            errors = [failed[k] for k in keys if k in failed]
            if errors:
                dropped.append((candidate.name, option, errors[0]))
                continue
            rows_list.append((option, float(sum(net_of(k) for k in keys))))
            spreads.append(max((ratios[k].ratio_rel_se for k in keys if k in ratios),
                               default=0.0))
        rows = tuple(rows_list)
        mapped = all(node in profile.node_times for node in candidate.node_names)
        profiled = profile.nodes_time(candidate.node_names) if mapped else None
        entries.append(CandidateLatency(candidate.name, candidate.node_names, profiled, rows,
                                        tuple(spreads)))

    to_total = profile.to_total(overhead.median_s)
    base, scale = _base_and_scale(profile, entries, to_total)
    entries = _structures_in_graph(entries, analysis, per_candidate, ratios, savings, profile,
                                   scale, to_total)
    if injected_timer is None and pair_timer is None:  # real timings only: runs whole models
        entries = _shared_in_context(entries, model, analysis, scale, profile.total_s, runtime,
                                     cache, env)
    table = LatencyTable(
        candidates=tuple(entries),
        base_s=base,
        dense_total_s=profile.total_s,
        scale=scale,
        overhead_s=overhead.median_s,
        environment=env,
        fingerprint=env_key,
        profile=profile,
        timings_run=run_count,
        timings_cached=cached_count,
        dropped=tuple(dropped),
        total_spread=total_spread,
    )
    logger.info(
        "latency table: %d candidates, %d timings measured, %d from cache; dense %.3f ms, "
        "base %.3f ms, isolation gap %+.3f ms, correction x%.3f",
        len(entries),
        run_count,
        cached_count,
        table.dense_total_s * 1e3,
        base * 1e3,
        table.gap_s * 1e3,
        scale,
    )
    return table


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
