"""The Amdahl bound measured, not summed: the all-fastest model timed against dense.

The latency table predicts the bound as ``T_dense / (base + Σ fastest option)``. At the bound
most of the model is gone, so what is left is a small difference of large, separately measured
numbers: the profile's share of the fixed ops, each structure's saving at its narrowest width,
the isolation→graph correction. A few percent of noise in any of them moved the digits CNN's bound
between 14.9x and 19.2x on one idle machine, and in-context effects the isolated timings cannot
see (a narrow structure's kernels fuse differently inside the graph) made the transformer's bound
2.68x where 3.27x was reachable.

So the bound is measured directly: every candidate is materialized at its fastest option (random
weights and masks of the option's family — speed depends on shapes, not values), and that model
is timed against the dense one in fresh interleaved session pairs, the statistic ``bench`` and
the final verification use (median over sessions of each session's median pair ratio). This is
one more model to time (a few seconds), and it is the number a user would measure.

The measurement then anchors the table: :func:`saving_scale_for` finds the one factor on every
option's predicted saving that makes the table's all-fastest prediction equal the measurement.
The dense end is exact already, so predictions in between interpolate between two measured ends,
and the DP, the "beyond the bound" refusal and the report all read one consistent bound.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxprune.common.runtime import RuntimeConfig
from onnxprune.graph.candidates import Candidate
from onnxprune.latency.cache import TimingCache, default_cache_dir, fingerprint, runtime_environment
from onnxprune.latency.measure import SpeedResult
from onnxprune.latency.random_masks import fastest_choice
from onnxprune.latency.source import MEASURED, TimingSource
from onnxprune.layouts.base import LayoutOption

logger = logging.getLogger("onnxprune")

BOUND_SESSIONS = 5
"""Fresh session pairs per round of the bound's measurement."""
BOUND_SECONDS = 5.0
"""Wall-clock budget of one round (all its sessions)."""
BOUND_PRECISION = 0.05
"""Rounds are added until the bound's spread (≈ 2 standard errors) is at most this, relative:
a model that runs in a fraction of a millisecond at its fastest differs by ±30% from one fresh
session to the next (digits CNN: 5.0 to 9.6x over five), where a 90 ms one differs by ±3%."""
BOUND_MAX_SECONDS = 25.0
"""Rounds are added for at most this long (wall clock, session set-up included). What a fast
model's sessions scatter with is the machine's phase, not the session: on this project's 2-vCPU
VM the digits CNN's all-fastest model ran 0.30–0.55 ms in phases of 10–30 s (the dense model
2.4–3.3 ms), so a median over 20 one-second sessions still moved ±11% (2 standard deviations)
between consecutive 20-second windows, and over 60 ±5.5% (``benchmarks/bound_phases.py``). Only
time spent measuring averages phases out; more, shorter sessions do not (0.25 s ones did no
better per second). Phases of many minutes no single run can average: :class:`BoundHistory`
pools runs. 25 s keeps a cold MiniLM-L6 profile within its minute (its rounds take ~8 s with
session set-up; a cap of 6 rounds made one profile 62 s)."""
BOUND_MAX_ROUNDS = 6
"""And at most this many rounds (a prune run's rounds last ``--verify-seconds``)."""
BOUND_HISTORY = 60
"""Session medians of the bound kept across runs (the newest)."""
BOUND_STALE = 0.5
"""A first round more than this off the pooled earlier sessions (×1.5 or ÷1.5) drops them."""
FASTEST_TIE = 0.05
"""Options predicted within this of a candidate's fastest count as equally fast; the one
removing the most is the bound's. Narrow widths differ by less than the table's noise (the
digits MLP's 8- and 16-channel FFN took turns as "fastest" over three profiles), and the bound
should not change with which of them a run happened to time faster."""


def settled(bound: MeasuredBound, target: float | None = None) -> bool:
    """Whether the measurement is precise enough: spread within :data:`BOUND_PRECISION`, or
    (for a prune run) ``target`` clearly on one side of the bound, so more sessions could not
    change the decision."""
    if bound.rel_spread <= BOUND_PRECISION:
        return True
    if target is None:
        return False
    return (target <= bound.speedup * (1 - bound.rel_spread)
            or target > bound.speedup * (1 + bound.rel_spread))


@dataclass(frozen=True)
class MeasuredBound:
    """The all-fastest model's measured speedup over dense.

    Attributes:
        speedup: median over sessions (earlier runs' included) of each session's median pair
            ratio.
        rel_spread: ≈ 2 standard errors of that median, relative (from the spread over sessions).
        result: this run's sessions.
        earlier: the session medians of earlier runs it was pooled with (see
            :class:`BoundHistory`), oldest first.
    """

    speedup: float
    rel_spread: float
    result: SpeedResult
    earlier: tuple[float, ...] = ()

    @property
    def session_medians(self) -> list[float]:
        """Every session's median pair ratio: earlier runs' first, then this run's."""
        return [*self.earlier, *(s.speedup_median for s in self.result.sessions)]

    def to_json(self) -> dict:
        return {"speedup": self.speedup, "rel_spread": self.rel_spread,
                "sessions": self.session_medians, "sessions_earlier": len(self.earlier)}


def bound_of(result: SpeedResult, earlier: Sequence[float] = ()) -> MeasuredBound:
    """The median over sessions (``earlier`` ones too), with ≈ 2 standard errors of it
    (relative) as its spread."""
    medians = np.asarray([*earlier, *(s.speedup_median for s in result.sessions)],
                         dtype=np.float64)
    speedup = float(np.median(medians))
    if len(medians) > 1 and speedup > 0:
        # Standard error of a median ≈ 1.2533 σ / √n; two of them, relative.
        spread = 2 * 1.2533 * float(np.std(medians, ddof=1)) / math.sqrt(len(medians)) / speedup
    else:
        spread = 0.0
    return MeasuredBound(speedup, spread, result, tuple(float(m) for m in earlier))


class BoundHistory:
    """The bound's sessions of earlier runs, kept in the latency cache and pooled with new ones.

    One run can only average the machine's phases over the minute it measures; the digits CNN's
    bound read 8.2x in one cold profile and 6.5x in one a few minutes later, each within ±5% of
    itself. Sessions of the same all-fastest model (same bytes, inputs and environment) measured
    in earlier runs are as valid as new ones, so a run starts from them: it always measures one
    round of its own, then judges the pool, and keeps the newest :data:`BOUND_HISTORY`. A first
    round further than :data:`BOUND_STALE` from the pool's median means the machine is not the
    one the pool describes (another load, another power setting): the pool is dropped.
    """

    def __init__(self, cache: TimingCache | None, dense: bytes, fastest: bytes,
                 feed: Mapping[str, np.ndarray], runtime: RuntimeConfig) -> None:
        self.cache = cache
        self.meta = {"kind": "amdahl_bound", "dense": hashlib.sha256(dense).hexdigest(),
                     "fastest": hashlib.sha256(fastest).hexdigest(),
                     "inputs": {k: list(np.shape(v)) for k, v in sorted(feed.items())},
                     "environment": runtime_environment(runtime)}
        self.key = fingerprint(self.meta)

    def load(self) -> list[float]:
        value = self.cache.get(self.key, self.meta) if self.cache is not None else None
        if not value:
            return []
        try:
            return [float(x) for x in value["sessions"] if float(x) > 0][-BOUND_HISTORY:]
        except (KeyError, TypeError, ValueError):
            return []

    def save(self, measured: MeasuredBound) -> None:
        if self.cache is not None:
            self.cache.put(self.key, self.meta,
                           {"sessions": measured.session_medians[-BOUND_HISTORY:]})


def bound_cache(cache_dir: Path | None) -> TimingCache:
    """Where :class:`BoundHistory` keeps its sessions: the latency cache."""
    return TimingCache(cache_dir or default_cache_dir())


def still_valid(earlier: Sequence[float], first_round: SpeedResult) -> bool:
    """Whether this run's first round agrees with the pool of earlier runs (see
    :class:`BoundHistory`)."""
    if not earlier:
        return False
    ratio = first_round.speedup / float(np.median(earlier))
    return 1 / (1 + BOUND_STALE) <= ratio <= 1 + BOUND_STALE


def saving_scale_for(speedup_at: Callable[[float], float], measured: float,
                     low: float = 0.25, high: float = 4.0) -> float:
    """The factor ``k`` on every predicted saving with ``speedup_at(k) == measured``.

    ``speedup_at(k)`` is the table's all-fastest prediction with savings scaled by ``k``: it
    rises with ``k`` (more saved, faster). Bisection in ``[low, high]``; a measurement outside
    what that range can reach gets the nearest end (and a warning: the table and the model then
    disagree by more than a factor of 4 on what pruning saves).
    """
    if speedup_at(low) >= measured:
        k = low
    elif speedup_at(high) <= measured:
        k = high
    else:
        lo, hi = low, high
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if speedup_at(mid) < measured:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)
    logger.warning("the measured bound (%.2fx) is outside what the latency table can be "
                   "scaled to; its savings are scaled by %.2f", measured, k)
    return k


def measure_bound(
    model: onnx.ModelProto,
    candidates: Sequence[Candidate],
    fastest: Mapping[str, LayoutOption],
    runtime: RuntimeConfig,
    feed: Mapping[str, np.ndarray],
    *,
    predicted: float,
    progress: Callable[[int, int], None] | None = None,
    sessions: int = BOUND_SESSIONS,
    seconds: float = BOUND_SECONDS,
    max_rounds: int = BOUND_MAX_ROUNDS,
    max_seconds: float = BOUND_MAX_SECONDS,
    target: float | None = None,
    cache: TimingCache | None = None,
    timing: TimingSource = MEASURED,
) -> MeasuredBound:
    """Every candidate at ``fastest`` (random masks) timed against dense ``model``.

    Rounds of ``sessions`` fresh session pairs (``seconds`` each) are added until the bound is
    :func:`settled`, ``max_rounds`` have run, or another round would end past ``max_seconds``
    (wall clock, from the first). With a ``cache``, the sessions of earlier runs on the same
    all-fastest model are pooled with this run's (:class:`BoundHistory`). ``predicted`` (the
    table's all-fastest speedup) is passed to ``timing`` (a synthetic source answers from it).
    """
    from onnxprune.layouts.materialize import materialize

    chosen = fastest_choice(candidates, fastest)
    fastest_model = materialize(model, candidates, chosen).SerializeToString()
    dense = model.SerializeToString()

    def more() -> SpeedResult:
        return timing.speed(dense, fastest_model, {"synthetic": feed}, runtime,
                            sessions=sessions, seconds=seconds, chosen=chosen,
                            predicted=predicted)

    rounds = max(1, max_rounds)
    history = BoundHistory(cache, dense, fastest_model, feed, runtime)
    earlier = history.load()
    if progress:
        progress(0, rounds * sessions)
    start = time.perf_counter()
    result = more()
    if earlier and not still_valid(earlier, result):
        logger.info("the bound's first round (%.2fx) disagrees with the %d sessions of "
                    "earlier runs (median %.2fx); measuring it afresh", result.speedup,
                    len(earlier), float(np.median(earlier)))
        earlier = []
    for done in range(1, rounds):
        if progress:
            progress(len(result.sessions), rounds * sessions)
        elapsed = time.perf_counter() - start
        if settled(bound_of(result, earlier), target) or \
                elapsed * (done + 1) / done > max_seconds:
            break
        result = result.merged(more())
    if progress:
        progress(len(result.sessions), len(result.sessions))  # settled: all there is
    measured = bound_of(result, earlier)
    history.save(measured)
    return measured
