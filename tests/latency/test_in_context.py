"""A shared weight's savings measured in context: sampling, the factor, and the rewrite it times."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxprune.common.runtime import RuntimeConfig
from onnxprune.graph.candidates import find_candidates
from onnxprune.graph.shapes import bind_input_shapes
from onnxprune.latency import in_context
from onnxprune.latency.random_masks import model_with_options
from onnxprune.layouts.base import DENSE, LayoutOption
from onnxprune.layouts.registry import candidate_options
from tests.latency.builders import unrolled_rnn


def _option(level: float) -> LayoutOption:
    return LayoutOption("block", level, (("bk", 4), ("bn", 4)))


def test_samples_span_the_savings_from_the_fastest_down():
    times = [(DENSE, 10.0), *((_option(x / 10), 10.0 - x) for x in range(1, 10)),
             (_option(0.95), 12.0)]  # slower than dense: never sampled
    picked = in_context.sample_options(times)
    assert picked[0].level == pytest.approx(0.9)  # the fastest first
    assert [round(o.level, 1) for o in picked[1:]] == [0.6, 0.3]
    assert in_context.sample_options([(DENSE, 1.0), (_option(0.5), 1.5)]) == []


def test_the_factor_is_the_median_in_context_saving_over_the_predicted_one():
    model = unrolled_rnn(steps=6)
    analysis = find_candidates(model, bind_input_shapes(model, {"x": (1, 6, 8)}))
    shared = in_context.shared_candidates(analysis.candidates)
    assert sorted(len(c.sites) for c in shared) == [5, 6]  # W_h and W_x, one weight each
    cand = shared[0]
    options = [_option(0.25), _option(0.5), _option(0.75)]
    predicted = {o: 1e-3 for o in options}  # each predicted to save 1 ms of a 10 ms run
    ratios = {o: 10.0 / (10.0 - s) for o, s in zip(options, (0.5, 1.0, 2.0), strict=True)}
    factor, measured = in_context.saving_factor(
        model, analysis.candidates, cand, predicted, 10e-3, {}, RuntimeConfig(threads=1),
        cached=lambda name, option: ratios[option])
    assert measured[options[0]] == pytest.approx(0.5e-3)
    assert factor == pytest.approx(1.0)  # median of 0.5, 1.0 and 2.0
    factor, _ = in_context.saving_factor(
        model, analysis.candidates, cand, predicted, 10e-3, {}, RuntimeConfig(threads=1),
        cached=lambda name, option: 100.0)  # saves 9.9 ms of 1 predicted: capped
    assert factor == in_context.FACTOR_RANGE[1]


def test_what_is_timed_in_context_rewrites_every_site_of_the_shared_weight():
    model = unrolled_rnn(steps=6, hidden=32, features=32)
    analysis = find_candidates(model, bind_input_shapes(model, {"x": (1, 6, 32)}))
    cand = max(in_context.shared_candidates(analysis.candidates), key=lambda c: len(c.sites))
    option = max((o for o in candidate_options(cand, ["block"]) if o.layout == "block"),
                 key=lambda o: o.level)
    rewritten = model_with_options(model, analysis.candidates, {cand.name: option})
    onnx.checker.check_model(rewritten, full_check=True)
    x = np.random.default_rng(0).standard_normal((3, 6, 32)).astype(np.float32)
    out = ort.InferenceSession(rewritten.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert out.shape == (3, 32) and np.isfinite(out).all()
    dense_nodes = {n.name for n in model.graph.node}
    untouched = [n for n in rewritten.graph.node if n.name in {s.node for s in cand.sites}
                 and n.name in dense_nodes and n.op_type == "MatMul"
                 and cand.weight_source in n.input]
    assert not untouched  # no site still reads the dense shared weight
