"""The user's metric: built-ins on hand-made outputs, user code from a path, bad specs."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.common.errors import UserError
from onnxprune.fidelity import FidelityBound, compare, load_metric
from onnxprune.fidelity.metrics import detect, find_detection_output, match_count


def _yolo(boxes: list[tuple[float, float, float, float, int, float]], classes: int = 3,
          anchors: int = 20) -> np.ndarray:
    """[1, 4+C, N]: one anchor per (cx, cy, w, h, class, score); the rest background."""
    out = np.zeros((1, 4 + classes, anchors), np.float32)
    out[0, 4:] = 0.01
    for i, (cx, cy, w, h, cls, score) in enumerate(boxes):
        out[0, :4, i] = (cx, cy, w, h)
        out[0, 4 + cls, i] = score
    return out


def test_detection_f1_matches_boxes_by_class_and_iou():
    dense = _yolo([(50, 50, 20, 20, 0, 0.9), (150, 150, 40, 40, 1, 0.8), (10, 90, 8, 8, 2, 0.6)])
    # one box moved a little (still IoU > 0.5), one lost below the threshold, one of a new class
    pruned = _yolo([(52, 51, 20, 20, 0, 0.85), (150, 150, 40, 40, 1, 0.1),
                    (10, 90, 8, 8, 1, 0.7)])
    metric = load_metric("detection")
    assert metric({"output0": dense}, {"output0": dense}, None) == 1.0
    # 1 hit; 1 false positive (wrong class); 2 missed: F1 = 2 / (2 + 1 + 2)
    assert metric({"output0": dense}, {"output0": pruned}, None) == pytest.approx(2 / 5)
    # the [B, N, 4+C] layout reads the same
    rows = {"d": np.swapaxes(dense, 1, 2)}
    assert find_detection_output(rows) == ("d", "rows")
    assert metric(rows, {"d": np.swapaxes(pruned, 1, 2)}, None) == pytest.approx(2 / 5)


def test_detection_nms_keeps_one_of_overlapping_boxes_of_a_class():
    rows = np.swapaxes(_yolo([(50, 50, 20, 20, 0, 0.9), (51, 50, 20, 20, 0, 0.8),
                              (51, 50, 20, 20, 1, 0.7)]), 1, 2)[0].astype(np.float64)
    boxes, scores, classes = detect(rows, 0.25)
    assert list(classes) == [0, 1] and scores[0] == pytest.approx(0.9)
    assert match_count((boxes, scores, classes), (boxes, scores, classes)) == 2


def test_detection_without_dense_detections_says_so():
    nothing = {"output0": _yolo([])}
    with pytest.raises(UserError, match="detects nothing"):
        load_metric("detection:0.5")(nothing, nothing, None)
    with pytest.raises(UserError, match="YOLO-style"):
        load_metric("detection")({"y": np.zeros((4, 10))}, {"y": np.zeros((4, 10))}, None)


def test_top1_rank_and_cosine():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((100, 5))
    noisy = logits + 0.01 * rng.standard_normal(logits.shape)
    labels = np.argmax(logits, axis=1)
    labels[:10] = (labels[:10] + 1) % 5  # the dense model is right on 90 of 100
    top1 = load_metric("top1")
    assert top1({"l": logits}, {"l": logits}, labels) == pytest.approx(0.9)
    assert top1({"l": logits}, {"l": logits[::-1]}, None) < 0.5  # agreement without labels
    rank = load_metric("rank:1")
    assert rank({"l": logits}, {"l": noisy}, None) > 0.99
    assert abs(rank({"l": logits}, {"l": rng.permutation(logits)}, None)) < 0.3
    cosine = load_metric("cosine")
    assert cosine({"e": logits}, {"e": noisy}, None) > 0.99
    assert cosine({"e": logits}, {"e": -logits}, None) == pytest.approx(-1.0)


def test_the_metric_bound_reads_dense_minus_pruned():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((40, 4)).astype(np.float32)
    flipped = logits.copy()
    flipped[:8] = -flipped[:8]  # top-1 changes on most of these 8
    metric = load_metric("top1")
    fidelity = compare([({"l": flipped}, {"l": logits}, None)], metric=metric)
    assert fidelity.metric.dense == 1.0 and fidelity.metric.pruned < 0.9
    bound = FidelityBound(metric=metric, max_metric_drop=0.05)
    assert not bound.holds(fidelity)
    assert "top1 1.000 ->" in bound.violations(fidelity)[0]
    assert FidelityBound(metric=metric, max_metric_drop=0.5).holds(fidelity)
    assert bound.loss(fidelity) > 1.0 > FidelityBound(metric=metric,
                                                      max_metric_drop=0.5).loss(fidelity)


def test_a_user_metric_is_loaded_from_a_file_path(tmp_path):
    module = tmp_path / "my_metric.py"
    module.write_text(
        "import numpy as np\n"
        "def negative_mse(dense, pruned, labels):\n"
        "    return -float(np.mean((dense['y'] - pruned['y']) ** 2))\n"
        "NOT_CALLABLE = 3\n"
        "def broken(dense, pruned, labels):\n"
        "    raise RuntimeError('my bug')\n"
        "def text(dense, pruned, labels):\n"
        "    return 'high'\n"
    )
    metric = load_metric(f"{module}:negative_mse")
    y = {"y": np.ones((3, 2))}
    assert metric(y, y, None) == 0.0 and metric(y, {"y": np.zeros((3, 2))}, None) == -1.0
    with pytest.raises(UserError, match="not callable"):
        load_metric(f"{module}:NOT_CALLABLE")
    with pytest.raises(UserError, match="raised RuntimeError: my bug"):
        load_metric(f"{module}:broken")(y, y, None)
    with pytest.raises(UserError, match="not a number"):
        load_metric(f"{module}:text")(y, y, None)


@pytest.mark.parametrize(("spec", "message"), [
    ("accuracy", "unknown --metric 'accuracy'"),
    ("rank:first", "not an integer"),
    ("detection:1.5", "score threshold"),
    ("top1:3", "takes no argument"),
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
    ("json:no_such_function", "has no attribute 'no_such_function'"),
    ("missing/file.py:f", "no such file"),
    ("module:", "expected MODULE:CALLABLE"),
])
def test_bad_metric_specs_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        load_metric(spec)
