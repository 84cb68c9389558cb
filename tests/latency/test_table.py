"""Tests of onnxprune/latency/table.py: predictions, deduplication, cache keying."""

from __future__ import annotations

import functools
import json
import logging

import numpy as np
import onnxruntime as ort
import pytest

from onnxprune.common.runtime import RuntimeConfig
from onnxprune.graph.candidates import find_candidates
from onnxprune.graph.shapes import bind_input_shapes
from onnxprune.latency.build import build_latency_table
from onnxprune.latency.cache import fingerprint, runtime_environment
from onnxprune.latency.in_graph import _base_and_scale
from onnxprune.latency.isolated import site_signature
from onnxprune.latency.measure import Timing, time_model
from onnxprune.latency.profile import ModelProfile, profile_model
from onnxprune.latency.refine import REFINE_SESSIONS
from onnxprune.latency.table import CandidateLatency, LatencyTable
from onnxprune.layouts.base import DENSE, LayoutOption
from tests.latency.builders import dense_isolated, mlp

RUNTIME = RuntimeConfig(threads=1)
BLOCK = LayoutOption("block", 0.5, (("bk", 8), ("bn", 8), ("keep", 2)))
CHANNEL = LayoutOption("channel", 0.75, (("keep", 8),))


# ----------------------------------------------------------------------------- table logic
def _table(base=2.0, scale=1.0) -> LatencyTable:
    return LatencyTable(
        candidates=(
            CandidateLatency("a", ("a",), 4.0, ((DENSE, 4.0), (BLOCK, 2.0), (CHANNEL, 1.0))),
            CandidateLatency("b", ("b",), 4.0, ((DENSE, 4.0), (BLOCK, 3.0))),
        ),
        base_s=base,
        dense_total_s=base + scale * 8.0,
        scale=scale,
        overhead_s=0.0,
    )


def test_predicted_total_is_base_plus_corrected_option_times():
    table = _table(scale=0.5)
    assert table.predicted_total({}) == pytest.approx(table.dense_total_s)
    assert table.predicted_total({"a": BLOCK}) == pytest.approx(2.0 + 0.5 * (2.0 + 4.0))
    assert table.predicted_total({"a": CHANNEL, "b": BLOCK}) == pytest.approx(2.0 + 0.5 * 4.0)
    assert table.option_time("a", CHANNEL) == pytest.approx(0.5)
    assert table.predicted_speedup({}) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("total_ms", "overhead_ms", "base_ms"),
    [
        (8.0, 0.0, 2.0),  # kernels sum to the total: the base kernel is the fixed part
        (12.0, 0.0, 3.0),  # total from a slow phase: before, all 4 ms extra counted as fixed
        (6.0, 0.0, 1.5),  # a disturbed (slower) profile
        (9.0, 1.0, 3.0),  # the session overhead is fixed; the rest is shared out
    ],
)
def test_the_fixed_part_keeps_its_share_whatever_phase_each_session_ran_in(
        total_ms, overhead_ms, base_ms):
    """Profile and total come from different sessions; only the profile's shares are trusted."""
    profile = ModelProfile(total_s=total_ms * 1e-3, kernel_sum_s=8e-3,
                           node_times={"a": 6e-3, "b": 2e-3}, kernels=(), runs=10)
    entry = CandidateLatency("a", ("a",), 6e-3, ((DENSE, 3e-3),))
    base, scale = _base_and_scale(profile, [entry], profile.to_total(overhead_ms * 1e-3))
    assert base == pytest.approx(base_ms * 1e-3)
    assert scale == pytest.approx((total_ms - base_ms) / 3.0)


def test_unknown_candidates_and_options_are_refused():
    table = _table()
    with pytest.raises(KeyError, match="not in the latency table"):
        table.predicted_total({"zzz": DENSE})
    with pytest.raises(KeyError, match="was not timed"):
        table.predicted_total({"b": CHANNEL})


def test_amdahl_bound_uses_the_fastest_allowed_option():
    table = _table()
    assert table.amdahl_bound() == pytest.approx(10.0 / (2.0 + 1.0 + 3.0))
    assert table.amdahl_bound(["block"]) == pytest.approx(10.0 / (2.0 + 2.0 + 3.0))
    assert table.amdahl_bound([]) == pytest.approx(1.0)
    assert table.fastest(["block"]) == {"a": BLOCK, "b": BLOCK}


def test_gap_and_json_round_trip():
    table = _table(base=2.0, scale=0.5)
    assert table.gap_s == pytest.approx(6.0 - (2.0 + 8.0))
    again = LatencyTable.from_json(json.loads(json.dumps(table.to_json())))
    assert again == table


# ----------------------------------------------------------------------------- building
class CountingTimer:
    """Stub timer: 10 µs for every model; counts how many isolated timings ran."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model, feed, runtime) -> Timing:
        self.calls += 1
        assert len(feed) == 1  # the activation only
        return Timing(1e-5, 0.0, 5)


@pytest.fixture(scope="module")
def setup():
    """An MLP whose two middle layers are identical (32→32), its analysis and one profile."""
    model = mlp(widths=(16, 32, 32, 32, 8))
    bound = bind_input_shapes(model, {"x": (4, 16)})
    analysis = find_candidates(model, bound)
    profile = profile_model(model, bound, RUNTIME, runs=3, inflation_s=0.0)
    return model, analysis, profile


def _options(analysis):
    return {c.name: [DENSE, BLOCK, CHANNEL] for c in analysis.candidates}


def _build(setup, timer, runtime=RUNTIME, **kwargs):
    model, analysis, profile = setup
    options = kwargs.pop("options", _options(analysis))
    return build_latency_table(
        model,
        analysis,
        options,
        runtime,
        isolated=dense_isolated,
        timer=timer,
        profile=profile,
        **kwargs,
    )


# 3 distinct sites x 3 options, then each site's 2 non-dense options re-timed REFINE_SESSIONS times.
FRESH = 9 + 3 * 2 * REFINE_SESSIONS


def test_identical_layers_are_timed_once(setup, tmp_path):
    timer = CountingTimer()
    progress = []
    table = _build(
        setup,
        timer,
        cache_dir=tmp_path,
        progress=lambda done, total, text: progress.append((done, total, text)),
    )
    # 4 candidates, but fc1 and fc2 have the same signature: 3 shapes × 3 options.
    assert timer.calls == FRESH
    assert table.timings_run == FRESH and table.timings_cached == 0
    assert {c.name for c in table.candidates} == {f"fc{i}_mm" for i in range(4)}
    assert all(len(c.options) == 3 for c in table.candidates)
    assert progress[-1][0] == progress[-1][1] == len(progress)
    # All-dense reproduces the measured dense total.
    assert table.predicted_total({}) == pytest.approx(table.dense_total_s)
    assert table.base_s >= 0 and table.scale > 0
    assert LatencyTable.from_json(json.loads(json.dumps(table.to_json()))) == table


def test_second_build_reuses_the_cache(setup, tmp_path):
    _build(setup, CountingTimer(), cache_dir=tmp_path)
    timer = CountingTimer()
    table = _build(setup, timer, cache_dir=tmp_path)
    # Only the re-validation probes run: the three heaviest dense sites, timed again.
    assert timer.calls == 3
    assert table.timings_cached == 9 and table.timings_run == 0


class SlowerTimer(CountingTimer):
    """The machine is now 2x slower than when the cache was written."""

    def __call__(self, model, feed, runtime) -> Timing:
        super().__call__(model, feed, runtime)
        return Timing(2e-5, 0.0, 5)


def test_a_cache_the_machine_no_longer_matches_is_measured_again(setup, tmp_path, caplog):
    _build(setup, CountingTimer(), cache_dir=tmp_path)
    timer = SlowerTimer()
    with caplog.at_level(logging.WARNING, logger="onnxprune"):
        table = _build(setup, timer, cache_dir=tmp_path)
    assert "timing everything again" in caplog.text
    assert timer.calls == 3 + FRESH and table.timings_run == FRESH
    assert table.timings_cached == 0


def test_use_cache_false_writes_nothing(setup, tmp_path):
    _build(setup, CountingTimer(), cache_dir=tmp_path, use_cache=False)
    assert list(tmp_path.iterdir()) == []


def test_changed_threads_miss_the_cache(setup, tmp_path):
    _build(setup, CountingTimer(), cache_dir=tmp_path)
    timer = CountingTimer()
    _build(setup, timer, runtime=RuntimeConfig(threads=2), cache_dir=tmp_path)
    assert timer.calls == FRESH


def test_changed_shapes_miss_the_cache(setup, tmp_path):
    model, _, profile = setup
    _build(setup, CountingTimer(), cache_dir=tmp_path)
    bigger = find_candidates(model, bind_input_shapes(model, {"x": (8, 16)}))
    timer = CountingTimer()
    _build((model, bigger, profile), timer, cache_dir=tmp_path, options=_options(bigger))
    assert timer.calls == FRESH


def test_environment_fingerprint_changes_with_provider_threads_and_ort(monkeypatch):
    base = fingerprint(runtime_environment(RUNTIME))
    assert fingerprint(runtime_environment(RuntimeConfig(threads=1))) == base
    assert fingerprint(runtime_environment(RuntimeConfig(threads=2))) != base
    other_ep = RuntimeConfig("CUDAExecutionProvider", threads=1)
    assert fingerprint(runtime_environment(other_ep)) != base
    ep_options = {"arena_extend_strategy": "kSameAsRequested"}
    options = RuntimeConfig(threads=1, provider_options=ep_options)
    assert fingerprint(runtime_environment(options)) != base
    monkeypatch.setattr(ort, "__version__", "0.0.1")
    assert fingerprint(runtime_environment(RUNTIME)) != base


def test_signature_includes_the_site_shapes(setup):
    model, analysis, _ = setup
    bigger = find_candidates(model, bind_input_shapes(model, {"x": (8, 16)}))
    first = {c.name: c for c in analysis.candidates}
    for candidate in bigger.candidates:
        before = site_signature(first[candidate.name], 0, DENSE)
        assert site_signature(candidate, 0, DENSE) != before


def test_corrupt_cache_files_are_ignored(setup, tmp_path, caplog):
    _build(setup, CountingTimer(), cache_dir=tmp_path)
    files = sorted(tmp_path.glob("*.json"))
    assert files
    for path in files:
        path.write_text("{not json")
    timer = CountingTimer()
    with caplog.at_level(logging.WARNING, logger="onnxprune"):
        _build(setup, timer, cache_dir=tmp_path)
    assert timer.calls == FRESH
    assert "corrupt latency cache" in caplog.text
    # The re-measured entries replaced the corrupt ones (only the 3 re-validation probes run).
    timer = CountingTimer()
    assert _build(setup, timer, cache_dir=tmp_path).timings_run == 0
    assert timer.calls == 3


def test_an_option_that_cannot_be_built_is_dropped_with_a_reason(setup):
    def builder(candidate, option, site_index):
        if option == CHANNEL:
            raise ValueError("channel needs a prunable consumer")
        return dense_isolated(candidate, option, site_index)

    model, analysis, profile = setup
    table = build_latency_table(
        model,
        analysis,
        _options(analysis),
        RUNTIME,
        isolated=builder,
        timer=CountingTimer(),
        profile=profile,
        use_cache=False,
    )
    assert all(CHANNEL not in table.options(c.name) for c in table.candidates)
    assert len(table.dropped) == 4
    assert "prunable consumer" in table.dropped[0][2]
    assert LatencyTable.from_json(table.to_json()).dropped == table.dropped


def test_real_timer_end_to_end(setup, tmp_path):
    """Everything real (profile, overhead, time_model) except the isolated-model builder."""
    model, analysis, _ = setup
    table = build_latency_table(
        model,
        analysis,
        {c.name: [DENSE] for c in analysis.candidates},
        RUNTIME,
        isolated=dense_isolated,
        cache_dir=tmp_path,
        timer=functools.partial(time_model, max_seconds=0.05),
    )
    assert isinstance(table.profile, ModelProfile)
    assert table.dense_total_s > 0 and table.overhead_s > 0
    assert np.isfinite(table.gap_s) and table.scale > 0
    assert table.predicted_total({}) == pytest.approx(table.dense_total_s)
    assert table.amdahl_bound() == pytest.approx(1.0)


def test_default_builder_is_layouts_isolate():
    """The real isolated models of the registry's layouts build and feed (timer stubbed)."""
    from onnxprune.layouts.registry import get_layout

    model = mlp(widths=(64, 128, 128, 64))
    analysis = find_candidates(model, bind_input_shapes(model, {"x": (4, 64)}))
    options = {
        c.name: [o for name in ("block", "channel") for o in get_layout(name).options(c)[0]]
        for c in analysis.candidates
    }
    timer = CountingTimer()
    table = build_latency_table(
        model,
        analysis,
        options,
        RUNTIME,
        timer=timer,
        use_cache=False,
        profile=profile_model(model, analysis.bound, RUNTIME, runs=2, inflation_s=0.0),
    )
    assert table.dropped == ()
    assert timer.calls == table.timings_run > len(analysis.candidates)
    for candidate in analysis.candidates:
        assert len(table.options(candidate.name)) == 1 + len(options[candidate.name])
