"""The benchmark harness (benchmarks/bench*.py): equal-speed comparison, report, plot, guard.

No speed is asserted: the synthetic results below stand in for measured ones, and the one run
of the real harness uses a tiny timing budget and checks only that a point is recorded whole.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench  # noqa: E402
import bench_guard  # noqa: E402
import bench_onnxsim  # noqa: E402
import bench_report  # noqa: E402


def point(method: str, setting: float, speedup: float, accuracy: float, **extra) -> dict:
    return {"method": method, "setting": setting, "exit": 0, "wall_s": 1.0,
            "bench": [speedup * 0.98, speedup * 1.02], "speedup": speedup,
            "metric": {"accuracy": accuracy}, **extra}


def results() -> dict:
    points = [
        point("onnxprune", 1.5, 1.6, 0.97, within_bound=True),
        point("onnxprune", 2.0, 2.1, 0.95, within_bound=False),
        point("onnxprune (max)", 5.0, 4.5, 0.60, within_bound=False),
        point("uniform magnitude", 0.25, 1.2, 0.96),
        point("uniform magnitude", 0.5, 2.0, 0.80),
        point("uniform + recon", 0.5, 2.2, 0.96),  # ahead of onnxprune at 1.6x and 2.1x
        {"method": "onnxsim magnitude", "setting": 0.25, "exit": 0, "wall_s": 0.1,
         "note": "declined: onnxsim prunes nothing in this graph"},
        point("onnxsim wanda", 0.5, 1.4, 0.90),  # never reaches 1.6x
    ]
    model = {"model": "digits_mlp", "dense": {"accuracy": 0.98}, "bound": 6.0,
             "shapes": ["input=1024x64"], "headline": "accuracy", "eval_samples": 300,
             "plan": {"targets": ["1.5", "2", "max"], "levels": [0.25, 0.5], "seconds": 1.0,
                      "repeats": 2, "search_budget": "5", "verify_sessions": 3},
             "points": points, "wall_s": 60.0}
    machine = {"cpu": "test cpu", "cores": 2, "onnxruntime": "1.32.0", "threads": 2,
               "commit": "abc1234", "dirty": False, "date": "today", "python": "3.11"}
    return {"machine": machine, "quick": False, "tiny": False, "command": "benchmarks/bench.py",
            "models": [model], "wall_s": 60.0}


def test_at_speed_interpolates_between_bracketing_levels():
    curve = [(1.2, 0.96), (2.0, 0.80)]
    assert bench_report.at_speed(curve, 1.6) == pytest.approx(0.88)
    assert bench_report.at_speed(curve, 2.0) == pytest.approx(0.80)
    assert bench_report.at_speed(curve, 1.0) == pytest.approx(0.96)  # a faster level counts
    assert bench_report.at_speed(curve, 2.5) is None  # never that fast


def test_report_compares_at_equal_speed_and_says_where_onnxprune_is_behind(tmp_path):
    bench_report.write(results(), tmp_path)
    text = (tmp_path / "benchmarks.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| 1.5x") or line.startswith("| 2x") or line.startswith("| max")}
    assert set(rows) == {"1.5x", "2x", "max"}
    cells = [c.strip() for c in rows["1.5x"].split("|")[1:-1]]
    # target, speed, metric, bound held, wall, then the five baselines in order
    assert cells[1].startswith("1.60x [1.57, 1.63]") and cells[3] == "yes"
    assert cells[5] == f"{0.96 - (0.16 * 0.4 / 0.8):.4f}"  # uniform magnitude, interpolated
    assert cells[6] == "0.9600"  # faster, but worse than onnxprune here
    assert "**0.9600**" in rows["2x"]  # faster and better at 2.1x: bold
    assert cells[7] == "declined"
    assert cells[8] == "not reached (max 1.40x)"
    assert "no" in rows["2x"]
    assert "Where onnxsim declines: its chain walker finds no FFN chain" in text
    behind = text.split("## Where onnxprune is not ahead")[1]
    assert "digits_mlp at 1.60x: uniform + recon 0.9600 vs onnxprune 0.9700" not in behind
    assert "uniform + recon 0.9600 vs onnxprune 0.9500" in behind
    assert "commit `abc1234`" in text and "test cpu, 2 cores" in text
    assert "(img/benchmarks.png)" in text
    image = tmp_path / "img" / "benchmarks.png"
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.rglob("tmp*")]  # nothing half-written left behind


def test_guard_passes_its_own_record_and_fails_beyond_the_noise(tmp_path):
    record = tmp_path / "baseline.json"
    base = results()
    bench_guard.record(base, record)
    assert bench_guard.check(base, record) == []

    within = copy.deepcopy(base)
    first = within["models"][0]["points"][0]
    first["metric"]["accuracy"] -= 1 / 300  # one digit more misclassified: noise
    first["speedup"] *= 0.93
    assert bench_guard.check(within, record) == []

    worse = copy.deepcopy(base)
    first = worse["models"][0]["points"][0]
    first["metric"]["accuracy"] -= 0.05
    first["speedup"] *= 0.8
    failures = bench_guard.check(worse, record)
    assert len(failures) == 2
    assert any("digits_mlp@1.5x: speedup" in f for f in failures)
    assert any("digits_mlp@1.5x: accuracy" in f for f in failures)

    traded = copy.deepcopy(base)  # overshot the target: faster, and less accurate for it
    first = traded["models"][0]["points"][0]
    first["metric"]["accuracy"] -= 0.05
    first["speedup"] *= 1.25
    assert bench_guard.check(traded, record) == []
    first["speedup"] /= 1.25 * 1.25  # slower *and* less accurate: both flagged
    assert len(bench_guard.check(traded, record)) == 2

    gone = copy.deepcopy(base)
    del gone["models"][0]["points"][1]["speedup"]
    assert bench_guard.check(gone, record) == ["digits_mlp@2x: no written model this time "
                                               "(was 2.10x)"]
    assert "no record" in bench_guard.check(base, tmp_path / "missing.json")[0]


def test_onnxsim_gets_the_fit_part_of_the_calibration_set():
    batches = bench_onnxsim.calibration_batches(ROOT / "calibration" / "digits_mlp", 64)
    assert batches and all(set(b) == {"input"} for b in batches)
    total = sum(len(b["input"]) for b in batches)
    assert 0 < total < 64 + len(batches[0]["input"])
    assert batches[0]["input"].dtype == np.float32


def test_a_uniform_point_is_measured_and_scored(tmp_path):
    path, shapes, calib = bench.speedup_targets.MODELS["digits_mlp"]
    plan = bench.Plan((), (0.5,), seconds=0.2, repeats=1, onnxsim=False)
    model = bench.Model("digits_mlp", path, list(shapes), ROOT / calib, plan, tmp_path / "c")
    bench.run_onnxprune(model, tmp_path, 1, 0.5, "uniform magnitude", "--sparsity", "0.5",
                        "--layouts", "structure", "--verify-sessions", "1")
    (recorded,) = model.points
    assert recorded["exit"] == 0 and len(recorded["bench"]) == 1 and recorded["speedup"] > 0
    assert 0 <= recorded["metric"]["accuracy"] <= 1
    assert not (tmp_path / "out.onnx").exists()  # scored, then removed
