"""Second looks at isolated timings: the fastest options timed again, the cache checked.

The first pass of :func:`~onnxprune.latency.build.build_latency_table` times every option once.
Two things it cannot trust from that alone: the minimum over dozens of noisy option timings is
biased low (:func:`_refine_fastest` times the fastest few again and keeps medians), and a cache
outlives the machine state it was measured in (:func:`_cache_still_holds` re-times the heaviest
cached sites). Both re-time isolated models after the pass, with their own noise policy
(:data:`REFINE_FASTEST`, :data:`DISTURBED`, ...), so they live apart from the builder's loop.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from onnxprune.common.runtime import RuntimeConfig
from onnxprune.graph.candidates import Candidate
from onnxprune.latency.cache import TimingCache
from onnxprune.latency.isolated import (
    IsolatedBuilder,
    PairTimer,
    Timer,
    _reference,
    _time_against,
    isolated_feed,
)
from onnxprune.latency.measure import RatioTiming
from onnxprune.layouts.base import DENSE, LayoutOption

logger = logging.getLogger("onnxprune")

REFINE_FASTEST = 3
"""Per site, the fastest options are timed in this many more fresh session pairs."""
REFINE_SESSIONS = 2
DISTURBED = 1.25
"""A pair whose dense reference ran this far off the site's typical time is re-timed: on a
2-vCPU VM some fresh sessions run a 2-thread conv at 1-thread speed (2.9 ms instead of 1.6 ms)."""


def _refine_fastest(
    plan: Mapping[str, tuple[Candidate, int, LayoutOption, dict]],
    ratios: dict[str, RatioTiming], fresh: set[str], dense_key: Mapping[str, str],
    builder: IsolatedBuilder, runtime: RuntimeConfig, timer: Timer | None,
    pair_timer: PairTimer | None, raw: Mapping[str, float], cache: TimingCache,
) -> int:
    """Time each site's fastest few options again in fresh sessions; keep the median ratio.

    The minimum over dozens of noisy option timings is biased low, and one session can sit
    10-30% off the next (a grouped conv's NCHWc kernel runs up to 2x slower in some sessions).
    The fastest options decide the Amdahl bound and most of the DP's choices, so they get the
    median of ``1 + REFINE_SESSIONS`` session pairs. Before that, every pair whose dense reference
    ran far from that site's typical reference time (a disturbed session) is timed again, and
    disturbed pairs are left out of the medians. Returns how many timings were run. Every fresh
    option timing is written to the cache here, after refinement.
    """
    by_site: dict[str, list[str]] = {}
    for key in fresh:
        by_site.setdefault(dense_key[key], []).append(key)
    typical = {site: float(np.median([ratios[k].reference_s for k in keys]))
               for site, keys in by_site.items()}

    def disturbed(key: str, timing: RatioTiming) -> bool:
        """The pair's dense reference ran far off its typical time: a disturbed session."""
        ref = typical[dense_key[key]]
        return not ref / DISTURBED <= timing.reference_s <= ref * DISTURBED

    def again(key: str) -> RatioTiming:
        candidate, index, option, _ = plan[key]
        isolated_model = builder(candidate, option, index)
        feed = isolated_feed(isolated_model, candidate.sites[index].input_shape)
        return _time_against(_reference(builder, candidate, option, index), isolated_model,
                             feed, runtime,
                             timer, pair_timer, raw.get(dense_key[key]))

    count = 0
    for key in fresh:
        if disturbed(key, ratios[key]):
            ratios[key] = again(key)
            count += 1
    chosen = [key for site_keys in by_site.values()
              for key in sorted(site_keys, key=lambda k: ratios[k].ratio)[:REFINE_FASTEST]]
    runs: dict[str, list[RatioTiming]] = {key: [ratios[key]] for key in chosen}
    # Round-robin over the options, so one option's sessions are spread over the whole pass
    # rather than falling into the same few seconds of a noisy neighbour.
    for _ in range(REFINE_SESSIONS):
        for key in chosen:
            runs[key].append(again(key))
            count += 1
    for key, timings in runs.items():
        usable = [t for t in timings if not disturbed(key, t)] or timings
        middle = sorted(usable, key=lambda r: r.ratio)[len(usable) // 2]
        spread = float(np.std([r.ratio for r in usable]) / max(middle.ratio, 1e-12))
        ratios[key] = RatioTiming(middle.ratio, max(middle.ratio_rel_se, spread),
                                  middle.reference_s, middle.model_s,
                                  sum(r.pairs for r in timings))
    for key in fresh:
        cache.put(key, plan[key][3], ratios[key].to_json())
    return count


_CACHE_PROBES = 3
_CACHE_TOLERANCE = 1.25


def _cache_still_holds(
    plan: Mapping[str, tuple[Candidate, int, LayoutOption, dict]], raw: Mapping[str, float],
    fresh_count: int, builder: IsolatedBuilder, timer: Timer, runtime: RuntimeConfig,
) -> bool:
    """Re-time the heaviest cached dense sites; False when the machine no longer matches them.

    A cached table outlives the conditions it was measured in (a noisy neighbour then, a
    different CPU frequency now). The few heaviest dense timings are cheap to take again; when
    their median fresh/cached ratio is off by more than 25%, every cached timing is suspect.
    """
    dense = [(raw[k], k) for k, (_, _, option, _) in plan.items()
             if option == DENSE and k in raw]
    if not dense or fresh_count >= len(plan):
        return True
    ratios = []
    for cached_s, key in sorted(dense, reverse=True)[:_CACHE_PROBES]:
        candidate, index, option, _ = plan[key]
        isolated_model = builder(candidate, option, index)
        fresh = timer(isolated_model, isolated_feed(isolated_model,
                                                    candidate.sites[index].input_shape), runtime)
        ratios.append(fresh.median_s / max(cached_s, 1e-12))
    ratio = float(np.median(ratios))
    if 1 / _CACHE_TOLERANCE <= ratio <= _CACHE_TOLERANCE:
        return True
    logger.warning("cached latency timings are %.0f%% off what the heaviest nodes measure now; "
                   "timing everything again", abs(ratio - 1) * 100)
    return False
