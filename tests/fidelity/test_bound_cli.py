"""The default bound on the command line: models whose important output is small.

A detector-shaped model (box channels in pixels next to sigmoid scores) and a 2-way softmax
scorer are pruned for real; where the pruning destroys the scores, or the scorer's ranking, the
default bound refuses with exit 3 and names the output and channels, although the per-position
error (the bound before the channel measure) is within its 0.2; pruned gently, both pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from tests.cli_helpers import invoke
from tests.models import init, make_model, tensor

ANCHORS, FEATURES, HIDDEN, CLASSES = 48, 16, 32, 6


def _detector(rng: np.random.Generator) -> onnx.ModelProto:
    """x [B, N, 16] -> trunk -> boxes (pixels) and Sigmoid scores -> Concat -> [B, 4+C, N]."""
    nodes = [
        helper.make_node("MatMul", ["x", "w_trunk"], ["t"], name="trunk_mm"),
        helper.make_node("Relu", ["t"], ["h"], name="trunk_relu"),
        helper.make_node("MatMul", ["h", "w_box"], ["boxes"], name="box_mm"),
        helper.make_node("MatMul", ["h", "w_score"], ["logits"], name="score_mm"),
        helper.make_node("Sigmoid", ["logits"], ["scores"], name="score_sigmoid"),
        helper.make_node("Concat", ["boxes", "scores"], ["rows"], axis=2, name="cat"),
        helper.make_node("Transpose", ["rows"], ["output0"], perm=[0, 2, 1], name="to_yolo"),
    ]
    weights = [init("w_trunk", rng.standard_normal((FEATURES, HIDDEN)) / 4),
               init("w_box", 60.0 * rng.standard_normal((HIDDEN, 4))),
               init("w_score", rng.standard_normal((HIDDEN, CLASSES)))]
    return make_model(nodes, [tensor("x", ["batch", ANCHORS, FEATURES])],
                      [tensor("output0", ["batch", 4 + CLASSES, ANCHORS])], weights)


def _scorer(rng: np.random.Generator) -> onnx.ModelProto:
    """x [B, 16] -> hidden -> 2 logits (majority margin ~6) -> Softmax: p_minority near 0."""
    head = np.zeros((HIDDEN, 2))
    head[:, 1] = rng.standard_normal(HIDDEN) * 0.35
    nodes = [
        helper.make_node("MatMul", ["x", "w_hidden"], ["t"], name="hidden_mm"),
        helper.make_node("Relu", ["t"], ["h"], name="hidden_relu"),
        helper.make_node("MatMul", ["h", "w_head"], ["z"], name="head_mm"),
        helper.make_node("Add", ["z", "b_head"], ["logits"], name="head_bias"),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=-1, name="softmax"),
    ]
    weights = [init("w_hidden", rng.standard_normal((FEATURES, HIDDEN)) / 4),
               init("w_head", head), init("b_head", np.array([6.0, 0.0]))]
    return make_model(nodes, [tensor("x", ["batch", FEATURES])], [tensor("prob", ["batch", 2])],
                      weights)


def _setup(tmp_path: Path, model: onnx.ModelProto, sample_shape: tuple[int, ...]) -> tuple:
    rng = np.random.default_rng(7)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    calib = tmp_path / "calib"
    calib.mkdir()
    for index in range(8):
        x = rng.standard_normal((16, *sample_shape)).astype(np.float32)
        np.savez(calib / f"batch_{index:03d}.npz", x=x)
    return path, calib


def _prune(path: Path, calib: Path, out: Path, *flags: str):
    report = out.with_suffix(".json")
    ran = invoke("prune", path, out, "--calib", calib, "--threads", "1", "--verify-sessions", "1",
                 "--json", report, "--quiet", *flags)
    return ran, json.loads(report.read_text())


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return _setup(tmp_path_factory.mktemp("detector"), _detector(np.random.default_rng(0)),
                  (ANCHORS, FEATURES))


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    return _setup(tmp_path_factory.mktemp("scorer"), _scorer(np.random.default_rng(1)),
                  (FEATURES,))


def test_destroyed_detector_scores_are_refused_and_named(detector, tmp_path):
    path, calib = detector
    # only the score head is pruned: half its channels go, the boxes stay exact
    ran, report = _prune(path, calib, tmp_path / "out.onnx", "--sparsity", "0.5", "--layouts",
                         "channel", "--exclude", "trunk|box")
    assert ran.code == 3, ran.stderr
    assert not (tmp_path / "out.onnx").exists()
    assert "channel error" in ran.stderr and "'output0'" in ran.stderr
    assert "of axis 1 (of 10)" in ran.stderr
    fidelity = report["fidelity"]
    assert fidelity["relative_error"] < 0.2  # the per-position bound alone would pass it
    channels = fidelity["outputs"][0]["channels"]
    assert channels["worst_channels"][0] >= 4 and channels["channel_error"] > 0.5


def test_a_gently_pruned_detector_passes(detector, tmp_path):
    path, calib = detector
    ran, report = _prune(path, calib, tmp_path / "out.onnx", "--sparsity", "0.25", "--layouts",
                         "unstructured")
    assert ran.code == 0, ran.stderr
    assert report["within_fidelity_bound"] is True
    assert report["fidelity"]["channel_error"] <= 0.5


def test_a_scorer_that_lost_its_ranking_is_refused(scorer, tmp_path):
    path, calib = scorer
    ran, report = _prune(path, calib, tmp_path / "out.onnx", "--sparsity", "0.75", "--layouts",
                         "channel", "--exclude", "head")
    assert ran.code == 3, ran.stderr
    assert "channel error" in ran.stderr and "'prob'" in ran.stderr
    fidelity = report["fidelity"]
    assert fidelity["relative_error"] < 0.2  # probabilities near 0 and 1 barely moved
    assert fidelity["outputs"][0]["channels"]["log_odds_channels"] == 2
    # --metric rank:1 says the same in the user's terms
    ran, report = _prune(path, calib, tmp_path / "out.onnx", "--sparsity", "0.75", "--layouts",
                         "channel", "--exclude", "head", "--metric", "rank:1")
    assert ran.code == 3, ran.stderr
    assert "rank:1 1.000 ->" in ran.stderr
    assert report["fidelity"]["metric"]["pruned"] < 0.95


def test_a_gently_pruned_scorer_passes(scorer, tmp_path):
    path, calib = scorer
    ran, report = _prune(path, calib, tmp_path / "out.onnx", "--sparsity", "0.25", "--layouts",
                         "unstructured", "--metric", "rank:1")
    assert ran.code == 0, ran.stderr
    assert report["fidelity"]["metric"]["pruned"] > 0.95
    assert report["fidelity_bound"]["metric"] == "rank:1"
    assert report["fidelity_bound"]["max_relative_error"] is None  # the metric judges


def test_metric_options_that_cannot_work_exit_2(scorer, tmp_path):
    path, calib = scorer
    out = tmp_path / "out.onnx"
    for flags, message in [
        (("--metric", "nonsense"), "unknown --metric"),
        (("--metric", "detection"), "YOLO-style"),
        (("--metric", "top1", "--max-metric-drop", "-1"), "at least 0"),
        (("--max-metric-drop", "0.1"), "bounds a --metric"),
    ]:
        ran = invoke("prune", path, out, "--calib", calib, "--sparsity", "0.25", "--layouts",
                     "unstructured", "--threads", "1", "--quiet", *flags)
        assert ran.code == 2, (flags, ran.stderr)
        assert message in ran.stderr and "Traceback" not in ran.stderr
    ran = invoke("prune", path, out, "--sparsity", "0.25", "--layouts", "unstructured",
                 "--metric", "top1", "--quiet")
    assert ran.code == 2 and "needs calibration data" in ran.stderr
    assert not out.exists()


def test_a_user_metric_file_is_the_bound(scorer, tmp_path):
    path, calib = scorer
    metric = tmp_path / "scorer_metric.py"
    metric.write_text(
        "import numpy as np\n"
        "def kept_order(dense, pruned, labels):\n"
        "    d, p = dense['prob'][:, 1], pruned['prob'][:, 1]\n"
        "    return float(np.mean(np.argsort(np.argsort(d)) == np.argsort(np.argsort(p))))\n"
    )
    ran, report = _prune(path, calib, tmp_path / "out.onnx", "--sparsity", "0.75", "--layouts",
                         "channel", "--exclude", "head", "--metric", f"{metric}:kept_order",
                         "--max-metric-drop", "0.5")
    score = report["fidelity"]["metric"]
    assert score["dense"] == 1.0 and score["name"] == f"{metric}:kept_order"
    assert ran.code == (0 if score["drop"] <= 0.5 else 3), ran.stderr
