"""Tests of onnxprune/latency/measure.py: structure and stopping logic, never speed."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from onnxprune.common.runtime import RuntimeConfig
from onnxprune.latency.measure import (
    PairResult,
    RatioTiming,
    SpeedResult,
    Timing,
    bench_pair,
    bench_sessions,
    time_model,
    time_ratio,
    time_runner,
)
from tests.latency.builders import mlp

RUNTIME = RuntimeConfig(threads=1)


def _feed(batch: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((batch, 16)).astype(np.float32)}


def test_time_model_returns_a_sane_timing():
    timing = time_model(mlp(), _feed(), RUNTIME, min_repeats=5, max_repeats=50, max_seconds=0.2)
    assert isinstance(timing, Timing)
    assert 5 <= timing.repeats <= 50
    assert timing.median_s > 0 and math.isfinite(timing.median_s)
    assert timing.mad_s >= 0
    assert Timing.from_json(timing.to_json()) == timing


def test_time_model_accepts_serialized_bytes():
    timing = time_model(
        mlp().SerializeToString(), _feed(), RUNTIME, max_repeats=10, max_seconds=0.1
    )
    assert timing.repeats >= 1


def test_time_model_rejects_a_feed_missing_an_input():
    with pytest.raises(ValueError, match="feed lacks"):
        time_model(mlp(), {}, RUNTIME)


def test_runner_stops_once_the_median_is_stable():
    calls = itertools.count()
    timing = time_runner(lambda: (next(calls), 1e-3)[1], warmup=2, min_repeats=7, max_repeats=100)
    assert timing.repeats == 7  # zero spread: stable at the first check
    assert next(calls) == 9  # warm-up runs are not timed samples
    assert timing.median_s == 1e-3 and timing.mad_s == 0


def test_runner_stops_at_max_repeats_when_noisy():
    noise = itertools.cycle([1e-3, 3e-3, 2e-3, 5e-3])
    timing = time_runner(
        lambda: next(noise), warmup=0, min_repeats=3, max_repeats=12, rel_tol=1e-9, max_seconds=60
    )
    assert timing.repeats == 12


def test_runner_always_makes_min_repeats_even_past_the_time_cap():
    timing = time_runner(
        lambda: 1.0, warmup=0, min_repeats=4, max_repeats=10, max_seconds=0.0, rel_tol=0.0
    )
    assert timing.repeats == 4


def test_bench_pair_structure_on_identical_models():
    model = mlp()
    result = bench_pair(model, model, _feed(), RUNTIME, pairs=20, min_pairs=5, max_seconds=0.3)
    assert isinstance(result, PairResult)
    assert 5 <= result.pairs <= 20
    for value in (
        result.speedup_median,
        result.speedup_q25,
        result.speedup_q75,
        result.time_a_s,
        result.time_b_s,
    ):
        assert math.isfinite(value) and value > 0
    assert result.speedup_q25 <= result.speedup_median <= result.speedup_q75
    assert set(result.to_json()) >= {"speedup_median", "pairs"}


def test_time_ratio_of_a_model_against_itself_is_structured():
    model = mlp()
    ratio = time_ratio(model, model, _feed(), RUNTIME, min_pairs=5, max_pairs=40,
                       max_seconds=0.3)
    assert isinstance(ratio, RatioTiming)
    assert 5 <= ratio.pairs <= 40
    assert ratio.ratio > 0 and ratio.reference_s > 0 and ratio.model_s > 0
    assert ratio.ratio_rel_se >= 0
    assert RatioTiming.from_json(ratio.to_json()) == ratio


def _pair(median: float) -> PairResult:
    return PairResult(median, median * 0.9, median * 1.1, 2e-3, 2e-3 / median, 10)


def test_speed_result_statistics_over_sessions():
    result = SpeedResult(tuple(_pair(m) for m in (2.0, 1.5, 2.1, 2.2, 1.9)),
                         ("synthetic", "calibration") * 2 + ("synthetic",))
    assert result.speedup == pytest.approx(2.0)  # median over sessions
    assert result.speedup_low == pytest.approx(1.9)  # lower quartile: one bad session tolerated
    assert (result.speedup_min, result.speedup_max) == (1.5, 2.2)
    assert result.pairs == 50
    data = result.to_json()
    assert len(data["sessions"]) == 5 and data["sessions"][1]["feed"] == "calibration"


def test_bench_sessions_makes_fresh_session_pairs_and_takes_feeds_in_turn():
    model = mlp()
    seen = []
    result = bench_sessions(model, model, {"synthetic": _feed(), "calibration": _feed(3)},
                            RUNTIME, sessions=3, seconds=0.3,
                            progress=lambda done, total: seen.append((done, total)))
    assert len(result.sessions) == 3 and seen[-1] == (3, 3)
    assert result.feeds == ("synthetic", "calibration", "synthetic")
    # Each session pair interleaved both models (what is timed is the mechanics, not a speed).
    assert all(s.pairs >= 1 and s.time_a_s > 0 and s.time_b_s > 0 for s in result.sessions)
