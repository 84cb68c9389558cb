"""The measured Amdahl bound: the all-fastest model, and the table anchored to its measurement."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxprune.allocate.budget import AllocationProblem
from onnxprune.graph.candidates import find_candidates
from onnxprune.graph.shapes import bind_input_shapes
from onnxprune.latency.anchor import MeasuredBound, saving_scale_for
from onnxprune.latency.measure import PairResult, SpeedResult
from onnxprune.latency.random_masks import model_with_options
from onnxprune.latency.table import CandidateLatency, LatencyTable
from onnxprune.layouts.base import DENSE, LayoutOption
from onnxprune.layouts.registry import candidate_options
from onnxprune.structures.context import discover_and_attach, layouts_for
from tests.structures.builders import conv_chain, ffn_model

BLOCK = LayoutOption("block", 0.5, (("bk", 8), ("bn", 8), ("keep", 2)))


def _widest_cut(model: onnx.ModelProto, shapes: dict):
    """Candidates with structures attached, and each one's highest-level option."""
    analysis = find_candidates(model, bind_input_shapes(model, shapes))
    analysis, candidates, producers, _ = discover_and_attach(model, analysis,
                                                             list(analysis.candidates))
    chosen = {}
    for cand in candidates:
        options = candidate_options(cand, layouts_for(cand, ["block", "structure"], producers))
        if options:
            chosen[cand.name] = max(options, key=lambda o: o.level)
    return candidates, chosen


@pytest.mark.parametrize("build, shapes", [
    (lambda: ffn_model(32, ["gelu"]), {"x": (2, 4, 12)}),
    (lambda: conv_chain(16, ["bn", "relu", "maxpool"]), {"x": (2, 3, 6, 6)}),
    (lambda: conv_chain(16, ["relu"], flatten=True), {"x": (2, 3, 6, 6)}),
])
def test_the_fastest_model_is_valid_and_smaller_where_the_options_say(build, shapes):
    model = build()
    candidates, chosen = _widest_cut(model, shapes)
    structures = [c for c in candidates if chosen.get(c.name, DENSE).layout == "structure"]
    assert structures, "the builder should give at least one structure"
    fast = model_with_options(model, candidates, chosen)
    onnx.checker.check_model(fast, full_check=True)
    before = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    after = sum(int(np.prod(t.dims)) for t in fast.graph.initializer)
    assert after < before
    for cand in structures:  # the consumer keeps exactly `keep` channels' worth of weight
        keep, width = chosen[cand.name].param("keep"), chosen[cand.name].param("width")
        sizes = {int(np.prod(t.dims)) for t in fast.graph.initializer}
        assert cand.weight.size * keep // width in sizes
    name, shape = next(iter(shapes.items()))
    session = ort.InferenceSession(fast.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((5, *shape[1:])).astype(np.float32)
    out = session.run(None, {name: x})[0]  # dynamic batch survives the rewrite
    assert out.shape[0] == 5 and np.isfinite(out).all()


def test_saving_scale_is_found_by_bisection_and_clamped_outside_its_range():
    speedup_at = lambda k: 10.0 / (10.0 - 8.0 * min(k, 1.2))  # noqa: E731 - rises with k
    k = saving_scale_for(speedup_at, 2.5)
    assert speedup_at(k) == pytest.approx(2.5, rel=1e-6)
    assert saving_scale_for(speedup_at, 1.01) == pytest.approx(0.25)  # below what 0.25 gives
    assert saving_scale_for(speedup_at, 1e6) == pytest.approx(4.0)


def _problem() -> AllocationProblem:
    table = LatencyTable(
        candidates=(CandidateLatency("a", ("a",), 4.0, ((DENSE, 4.0), (BLOCK, 1.0))),
                    CandidateLatency("b", ("b",), 4.0, ((DENSE, 4.0), (BLOCK, 2.0)))),
        base_s=2.0, dense_total_s=10.0, scale=1.0, overhead_s=0.0)
    candidates = [SimpleNamespace(name="a", structure=None),
                  SimpleNamespace(name="b", structure=None)]
    return AllocationProblem(candidates, {"a": [DENSE, BLOCK], "b": [DENSE, BLOCK]}, table,
                             10.0, 2.0, "")


def _measured(speedup: float, sessions=(1.0, 1.0, 1.0)) -> MeasuredBound:
    pairs = tuple(PairResult(speedup * s, speedup * s, speedup * s, 1.0, 1.0 / speedup, 10)
                  for s in sessions)
    return MeasuredBound(speedup, 0.04, SpeedResult(pairs))


@pytest.mark.parametrize("measured", [1.6, 2.0, 3.0])
def test_anchoring_makes_the_bound_the_measured_one_and_keeps_dense_exact(measured):
    problem = _problem()
    assert problem.amdahl_bound == pytest.approx(2.0)  # 10 / (2 + 1 + 2)
    problem.anchor_to(_measured(measured))
    assert problem.amdahl_bound == pytest.approx(measured, rel=1e-6)
    assert problem.predicted_bound == pytest.approx(2.0)
    assert problem.bound_spread == pytest.approx(0.04)
    dense = {"a": DENSE, "b": DENSE}
    assert problem.speedup_of(dense) == pytest.approx(1.0)
    # In between, savings scale by one factor: a's block option saves 3 s before anchoring.
    a_only = {"a": BLOCK, "b": DENSE}
    expected = 10.0 / (10.0 - 3.0 * problem.saving_scale)
    assert problem.speedup_of(a_only) == pytest.approx(expected)


BLOCK_75 = LayoutOption("block", 0.75, (("bk", 8), ("bn", 8), ("keep", 1)))


@pytest.mark.parametrize("time_75, expected", [(1.04, BLOCK_75), (1.2, BLOCK), (0.9, BLOCK_75)])
def test_the_bound_takes_the_option_removing_most_among_equally_fast_ones(time_75, expected):
    """Two options within FASTEST_TIE of each other tie; the narrower one is the bound's."""
    table = LatencyTable(
        candidates=(CandidateLatency("a", ("a",), 4.0,
                                     ((DENSE, 4.0), (BLOCK, 1.0), (BLOCK_75, time_75))),),
        base_s=2.0, dense_total_s=6.0, scale=1.0, overhead_s=0.0)
    problem = AllocationProblem([SimpleNamespace(name="a", structure=None)],
                                {"a": [DENSE, BLOCK, BLOCK_75]}, table, 6.0, 2.0, "")
    assert problem.fastest_options() == {"a": expected}


class _Scripted:
    """A timing source whose bound sessions read from a script (one value per session)."""

    def __init__(self, medians):
        self.medians = list(medians)
        self.calls = 0

    def speed(self, dense, pruned, feeds, runtime, *, sessions, seconds, chosen, predicted):
        self.calls += 1
        taken, self.medians = self.medians[:sessions], self.medians[sessions:]
        return SpeedResult(tuple(PairResult(m, m, m, 1.0, 1.0 / m, 10) for m in taken))


def _ffn_problem():
    """A real FFN model with its problem from a synthetic (seeded) latency table."""
    from onnxprune.allocate.budget import problem_from_table
    from onnxprune.common.runtime import RuntimeConfig
    from onnxprune.latency.synthetic import SyntheticTiming

    model = ffn_model(32, ["gelu"])
    analysis = find_candidates(model, bind_input_shapes(model, {"x": (2, 4, 12)}))
    analysis, candidates, producers, _ = discover_and_attach(model, analysis,
                                                             list(analysis.candidates))
    options = {c.name: candidate_options(c, layouts_for(c, ["block", "structure"], producers))
               for c in candidates}
    table = SyntheticTiming(3).table(model, analysis, options, RuntimeConfig(threads=1),
                                     cache_dir=None, progress=None)
    feed = {"x": np.zeros((2, 4, 12), np.float32)}
    return model, problem_from_table(table, candidates), feed


NOISY = [4.0, 6.0, 5.0, 3.5, 6.5] * 20  # spread of a round ≈ 25%: never settled by precision
STEADY = [5.0, 5.05, 4.95, 5.0, 5.02] * 20


@pytest.mark.parametrize("script, target, rounds", [
    (STEADY, None, 1),        # precise after one round
    (NOISY, None, 4),         # noisy: rounds added up to the cap
    (NOISY, 1.5, 1),          # a target far below the bound is decided at once
    (NOISY, 30.0, 1),         # ... and one far above it
    (NOISY, 5.0, 4),          # a target inside the spread needs every round
])
def test_rounds_are_added_until_the_bound_is_precise_or_the_target_decided(script, target,
                                                                           rounds):
    from onnxprune.common.runtime import RuntimeConfig

    model, problem, feed = _ffn_problem()
    source = _Scripted(script)
    measured = problem.anchor(model, RuntimeConfig(threads=1), feed, sessions=5, seconds=0.0,
                              max_rounds=4, target=target, timing=source)
    assert source.calls == rounds
    assert len(measured.result.sessions) == 5 * rounds
    assert problem.amdahl_bound == pytest.approx(measured.speedup, rel=1e-6)


def test_later_runs_pool_their_sessions_with_earlier_ones_and_drop_a_stale_pool(tmp_path):
    from onnxprune.common.runtime import RuntimeConfig
    from onnxprune.latency.anchor import BOUND_HISTORY, bound_cache

    runtime, cache = RuntimeConfig(threads=1), bound_cache(tmp_path)
    model, problem, feed = _ffn_problem()
    first = problem.anchor(model, runtime, feed, sessions=5, seconds=0.0, max_rounds=1,
                           cache=cache, timing=_Scripted([5.0, 5.2, 4.8, 5.1, 4.9]))
    assert first.earlier == () and first.speedup == pytest.approx(5.0)
    model, problem, feed = _ffn_problem()
    second = problem.anchor(model, runtime, feed, sessions=5, seconds=0.0, max_rounds=1,
                            cache=cache, timing=_Scripted([6.0] * 5))
    assert second.earlier == (5.0, 5.2, 4.8, 5.1, 4.9)  # pooled: the median of all ten
    assert second.speedup == pytest.approx(5.6) and second.to_json()["sessions_earlier"] == 5
    assert problem.amdahl_bound == pytest.approx(5.6, rel=1e-6)
    # A first round 2x off the pool: the machine is not the one the pool describes.
    model, problem, feed = _ffn_problem()
    third = problem.anchor(model, runtime, feed, sessions=5, seconds=0.0, max_rounds=1,
                           cache=cache, timing=_Scripted([12.0] * 5))
    assert third.earlier == () and third.speedup == pytest.approx(12.0)
    # The pool keeps the newest BOUND_HISTORY sessions only.
    for _ in range(BOUND_HISTORY // 5 + 2):
        model, problem, feed = _ffn_problem()
        last = problem.anchor(model, runtime, feed, sessions=5, seconds=0.0, max_rounds=1,
                              cache=cache, timing=_Scripted([12.0] * 5))
    assert len(last.earlier) == BOUND_HISTORY
    # Another environment (here: thread count) does not see this pool.
    model, problem, feed = _ffn_problem()
    elsewhere = problem.anchor(model, RuntimeConfig(threads=2), feed, sessions=5, seconds=0.0,
                               max_rounds=1, cache=cache, timing=_Scripted([12.0] * 5))
    assert elsewhere.earlier == ()


def test_a_narrower_option_dropped_as_dominated_still_ties_for_the_bound():
    """1.02 against 1.0: dominated for the DP (slower and removes more), equal for the bound."""
    from onnxprune.allocate.budget import problem_from_table

    table = LatencyTable(
        candidates=(CandidateLatency("a", ("a",), 4.0,
                                     ((DENSE, 4.0), (BLOCK, 1.0), (BLOCK_75, 1.02))),),
        base_s=2.0, dense_total_s=6.0, scale=1.0, overhead_s=0.0)
    problem = problem_from_table(table, [SimpleNamespace(name="a", structure=None)])
    assert problem.options["a"] == [DENSE, BLOCK]
    assert problem.fastest_options() == {"a": BLOCK_75}


def test_no_round_is_started_that_would_end_past_the_time_cap(monkeypatch):
    """Rounds of 10 s (by a fake clock) under a 25 s cap: the third would end at 30 s."""
    from onnxprune.common.runtime import RuntimeConfig
    from onnxprune.latency import anchor

    now = [0.0]

    class _Slow(_Scripted):
        def speed(self, *args, **kwargs):
            now[0] += 10.0
            return super().speed(*args, **kwargs)

    monkeypatch.setattr(anchor, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    model, problem, feed = _ffn_problem()
    source = _Slow(NOISY)
    problem.anchor(model, RuntimeConfig(threads=1), feed, sessions=5, seconds=0.0,
                   max_rounds=10, max_seconds=25.0, timing=source)
    assert source.calls == 2
