"""The synthetic latency source: seeded, plausible, and a real seam into the pipeline."""

from __future__ import annotations

import re

import numpy as np
import pytest

from onnxprune import PruneConfig
from onnxprune.latency.synthetic import SyntheticTiming
from onnxprune.layouts.base import DENSE, LayoutOption
from onnxprune.pipeline.prune import prune
from tests.fuzz.graphs import Recipe, build


def _model(tmp_path, seed: int = 5):
    model, shapes = build(Recipe(start="sequence", picks=(1, 0, 0), opset=17, seed=seed))
    path = tmp_path / "in.onnx"
    path.write_bytes(model.SerializeToString())
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        np.savez(calib / f"b{index}.npz", x=rng.standard_normal((3, *shapes["x"][1:]))
                 .astype(np.float32))
    return path, calib, {"x": (2, *shapes["x"][1:])}


def test_option_times_are_seeded_and_shrink_with_the_level():
    timing = SyntheticTiming(seed=3)
    half = LayoutOption("channel", 0.5, (("keep", 4),))
    most = LayoutOption("channel", 0.875, (("keep", 1),))
    assert timing.option_time("a", 1.0, DENSE) == 1.0
    assert timing.option_time("a", 1.0, half) == SyntheticTiming(seed=3).option_time("a", 1.0, half)
    assert timing.option_time("a", 1.0, half) != SyntheticTiming(seed=4).option_time("a", 1.0, half)
    assert timing.option_time("a", 1.0, most) < timing.option_time("a", 1.0, half) < 1.0


def test_the_pipeline_asks_the_given_source_and_is_reproducible(tmp_path):
    """Same input, same seed, same synthetic numbers: byte-identical output (the part of
    reproducibility that does not depend on timing)."""
    path, calib, shapes = _model(tmp_path)
    outputs = []
    for run in range(2):
        timing = SyntheticTiming(seed=1)
        out = tmp_path / f"out{run}.onnx"
        report = prune(path, out, PruneConfig(speedup=1.3, calib_dir=calib, shapes=shapes,
                                              threads=1, search_budget=0, verify_sessions=1,
                                              max_error=10.0,
                                              max_channel_error=1e9, best_effort=True),
                       timing=timing)
        assert timing.calls >= 1 and report.fingerprint == "synthetic-1"
        assert report.measured is not None and report.measured.feeds[0] == "synthetic"
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def test_measured_speed_is_the_prediction_times_a_bounded_bias():
    timing = SyntheticTiming(seed=2, measure_bias=(0.9, 1.0), sessions_spread=0.0)
    result = timing.speed(b"", None, {}, None, sessions=3, predicted=2.0)
    assert len(result.sessions) == 3
    # No session spread: every session is the prediction times one seeded bias from its range.
    bias = {s.speedup_median / 2.0 for s in result.sessions}
    assert len(bias) == 1 and 0.9 <= bias.pop() <= 1.0
    assert timing.speed(b"", None, {}, None, sessions=1).speedup == pytest.approx(
        1.0, abs=0.1)


def test_best_effort_never_writes_a_model_slower_than_its_input(tmp_path):
    """Measured far below its prediction (bias 0.5), every model found is slower than dense:
    --best-effort writes nothing and says so, instead of a slower file."""
    from onnxprune.common.errors import TargetUnreachableError

    path, calib, shapes = _model(tmp_path)
    out = tmp_path / "out.onnx"
    timing = SyntheticTiming(seed=1, measure_bias=(0.5, 0.5), sessions_spread=0.0)
    config = PruneConfig(speedup=1.3, calib_dir=calib, shapes=shapes, threads=1, search_budget=0,
                         verify_sessions=1, verify_rounds=1, max_error=10.0,
                         max_channel_error=1e9, best_effort=True)
    with pytest.raises(TargetUnreachableError, match="slower than the input") as refused:
        prune(path, out, config, timing=timing)
    assert re.search(r"--best-effort wrote nothing: the fastest model found measured 0\.\d\dx",
                     str(refused.value))
    assert not out.exists()
