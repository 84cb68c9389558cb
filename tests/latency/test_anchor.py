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
from onnxprune.latency.anchor import MeasuredBound, model_with_options, saving_scale_for
from onnxprune.latency.measure import PairResult, SpeedResult
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
