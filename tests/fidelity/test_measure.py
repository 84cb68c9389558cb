"""The fidelity measure: per output and per position, so no destroyed output hides."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

from onnxprune.fidelity import FidelityBound, compare
from tests.models import init, make_model, tensor


def _two_output_model(w_features: np.ndarray, w_scores: np.ndarray):
    """x [B, T, 16] -> features = x·Wf ([B, T, 64], large) and scores = x·Ws ([B, T, 5])."""
    return make_model(
        [helper.make_node("MatMul", ["x", "wf"], ["features"], name="features_mm"),
         helper.make_node("MatMul", ["x", "ws"], ["scores"], name="scores_mm")],
        [tensor("x", ["batch", "steps", 16])],
        [tensor("features", ["batch", "steps", 64]), tensor("scores", ["batch", "steps", 5])],
        [init("wf", w_features), init("ws", w_scores)],
    )


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"x": x}), strict=True))


def test_a_destroyed_small_output_is_caught_where_pooled_nmse_hides_it():
    rng = np.random.default_rng(0)
    w_features = 100.0 * rng.standard_normal((16, 64))
    w_scores = rng.standard_normal((16, 5))
    broken_scores = w_scores.copy()
    broken_scores[:, :4] = 0.0  # four of five score columns destroyed
    x = rng.standard_normal((4, 7, 16)).astype(np.float32)
    dense = _run(_two_output_model(w_features, w_scores), x)
    pruned = _run(_two_output_model(w_features, broken_scores), x)

    pooled = sum(float(np.sum((pruned[k] - dense[k]) ** 2)) for k in dense) / sum(
        float(np.sum(dense[k] ** 2)) for k in dense)
    assert pooled < 1e-4  # the pooled measure says "nothing happened"

    fidelity = compare([(pruned, dense, None)])
    by_name = {o.name: o for o in fidelity.outputs}
    assert by_name["features"].error_mean < 1e-5
    assert by_name["scores"].error_mean > 0.5
    assert by_name["scores"].positions == 4 * 7  # one vector per (sample, step)
    assert fidelity.error == by_name["scores"].error_mean
    assert fidelity.worst_output.name == "scores"
    bound = FidelityBound(max_error=0.2)
    assert not bound.holds(fidelity)
    assert "scores" in bound.violations(fidelity)[0]


def test_one_destroyed_position_shows_in_the_tail_and_the_mean():
    dense = {"y": np.ones((50, 8), np.float32)}
    pruned = {"y": dense["y"].copy()}
    pruned["y"][3] = -1.0  # one of 50 positions inverted
    out = compare([(pruned, dense, None)]).outputs[0]
    assert out.error_max == pytest.approx(2.0)
    assert out.error_mean == pytest.approx(2.0 / 50)
    assert out.cosine_min == pytest.approx(-1.0)


def test_identical_outputs_and_tiny_positions():
    rng = np.random.default_rng(1)
    dense = {"y": rng.standard_normal((10, 6)).astype(np.float32)}
    dense["y"][0] = 0.0  # a zero (padding-like) position: measured against a floor, not 0
    same = compare([(dense, dense, None)])
    assert same.error == 0.0 and same.outputs[0].cosine_min == pytest.approx(1.0)
    noisy = {"y": dense["y"] + 1e-3}
    assert np.isfinite(compare([(noisy, dense, None)]).error)


def test_integer_outputs_count_differing_positions_and_labels_give_accuracy():
    dense = {"logits": np.eye(4, dtype=np.float32), "label": np.arange(4)}
    pruned = {"logits": np.eye(4, dtype=np.float32)[[0, 1, 3, 3]], "label": np.array([0, 1, 3, 3])}
    fidelity = compare([(pruned, dense, np.arange(4))])
    by_name = {o.name: o for o in fidelity.outputs}
    assert by_name["label"].error_mean == pytest.approx(0.25)
    assert by_name["label"].cosine_mean is None
    assert fidelity.accuracy_dense == 1.0 and fidelity.accuracy_pruned == 0.75
    assert fidelity.accuracy_drop == pytest.approx(25.0)
    assert not FidelityBound(max_accuracy_drop=10).holds(fidelity)
    assert FidelityBound(max_accuracy_drop=30).holds(fidelity)
    assert not FidelityBound().active


def test_padded_positions_are_left_out_when_a_mask_matches():
    from onnxprune.calib.collect import padding_masks

    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=np.int64)
    masks = padding_masks({"input_ids": np.zeros((2, 4), np.int64), "attention_mask": mask})
    assert list(masks) == [(2, 4)]  # all-zero ids are not a mask; the 0/1 mask is
    dense = {"hidden": np.ones((2, 4, 3), np.float32)}
    pruned = {"hidden": dense["hidden"].copy()}
    pruned["hidden"][mask == 0] = 100.0  # garbage only where the input was padding
    assert compare([(pruned, dense, None, masks)]).error == 0.0
    assert compare([(pruned, dense, None)]).error > 1.0
