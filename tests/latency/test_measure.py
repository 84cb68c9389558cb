"""Tests of onnxprune/latency/measure.py: structure and stopping logic, never speed."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from onnxprune.latency.measure import PairResult, Timing, bench_pair, time_model, time_runner
from onnxprune.runtime import RuntimeConfig
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
