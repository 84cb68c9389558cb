"""The per-channel measure: no output scale can hide a destroyed channel."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnxprune.fidelity import FidelityBound, compare
from onnxprune.fidelity.channels import (
    ChannelAccumulator,
    channel_axes,
    log_odds,
    probability_outputs,
)
from tests.models import init, make_model, tensor


def _detector_outputs(rng, destroy_scores: bool, noise: float = 0.0):
    """YOLO-style [B, 4+C, N]: boxes in pixels (hundreds), then C sigmoid scores."""
    boxes = 320.0 * rng.random((2, 4, 300))
    logits = rng.standard_normal((2, 6, 300)) * 3.0 - 4.0
    dense = np.concatenate([boxes, 1 / (1 + np.exp(-logits))], axis=1).astype(np.float32)
    pruned = dense.copy()
    pruned[:, :4] += noise * rng.standard_normal((2, 4, 300)) * 320.0
    if destroy_scores:
        pruned[:, 4:] = 0.5 / (1 + np.exp(-rng.standard_normal((2, 6, 300))))
    else:
        pruned[:, 4:] = 1 / (1 + np.exp(-(logits + noise * 3.0 *
                                          rng.standard_normal(logits.shape))))
    return {"output0": dense}, {"output0": pruned}


def test_destroyed_scores_next_to_large_boxes_fail_the_channel_bound_only():
    rng = np.random.default_rng(0)
    dense, pruned = _detector_outputs(rng, destroy_scores=True)
    fidelity = compare([(pruned, dense, None)], probabilities={"output0"})
    assert fidelity.error < 0.05  # the per-position error is fooled by the box scale
    assert fidelity.channel_error > 1.0
    channels = fidelity.outputs[0].channels
    assert channels.axis == 1 and channels.channels == 10
    assert set(channels.worst) <= set(range(4, 10))  # the score channels are named
    bound = FidelityBound(max_error=0.2, max_channel_error=0.5)
    broken = bound.violations(fidelity)
    assert len(broken) == 1 and "channel error" in broken[0] and "'output0'" in broken[0]
    assert "of axis 1 (of 10)" in broken[0]


def test_a_gently_perturbed_detector_passes_both_bounds():
    rng = np.random.default_rng(1)
    dense, pruned = _detector_outputs(rng, destroy_scores=False, noise=0.03)
    fidelity = compare([(pruned, dense, None)], probabilities={"output0"})
    assert fidelity.channel_error < 0.2
    assert FidelityBound(max_error=0.2, max_channel_error=0.5).holds(fidelity)


def test_a_scorer_whose_minority_score_lost_its_ranking_fails_as_log_odds():
    """A 2-way softmax: the minority probability stays near 0 (tiny absolute change), but the
    logits behind it are shuffled, so its ranking over the samples is gone."""
    rng = np.random.default_rng(2)
    margin = rng.uniform(3.0, 9.0, 400)  # majority-class logit margin: p_minority 1e-4 .. 5e-2
    shuffled = rng.permutation(margin)

    def softmax2(m):
        p = 1 / (1 + np.exp(m))
        return np.stack([1 - p, p], axis=1).astype(np.float32)

    dense, pruned = {"prob": softmax2(margin)}, {"prob": softmax2(shuffled)}
    as_probabilities = compare([(pruned, dense, None)], probabilities={"prob"})
    assert as_probabilities.error < 0.05  # what the old bound saw: nothing happened
    assert as_probabilities.channel_error > 1.0
    assert as_probabilities.outputs[0].channels.log_odds == 2
    assert not FidelityBound(max_error=0.2, max_channel_error=0.5).holds(as_probabilities)
    gentle = {"prob": softmax2(margin + 0.1 * rng.standard_normal(400))}
    assert compare([(gentle, dense, None)], probabilities={"prob"}).channel_error < 0.1


def test_channels_are_plain_values_unless_the_graph_says_probabilities():
    """A small ReLU output lies in (0, 1] too; it must not be blown up as log-odds."""
    dense = {"y": np.full((50, 3), 0.5, np.float32) + np.linspace(0, 0.4, 50)[:, None]}
    pruned = {"y": dense["y"] + 0.01}
    plain = compare([(pruned, dense, None)]).outputs[0].channels
    assert plain.log_odds == 0
    odds = compare([(pruned, dense, None)], probabilities={"y"}).outputs[0].channels
    assert odds.log_odds == 3


def test_probability_outputs_follow_sigmoid_and_softmax_through_concat_and_layout_ops():
    nodes = [
        helper.make_node("MatMul", ["x", "wb"], ["boxes"], name="box_mm"),
        helper.make_node("MatMul", ["x", "ws"], ["logits"], name="score_mm"),
        helper.make_node("Sigmoid", ["logits"], ["scores"], name="sig"),
        helper.make_node("Concat", ["boxes", "scores"], ["cat"], axis=2, name="cat"),
        helper.make_node("Transpose", ["cat"], ["det"], perm=[0, 2, 1], name="tr"),
        helper.make_node("Relu", ["boxes"], ["plain"], name="relu"),
    ]
    model = make_model(nodes, [tensor("x", ["batch", 5, 8])],
                       [tensor("det", ["batch", 7, 5]), tensor("plain", ["batch", 5, 4])],
                       [init("wb", np.ones((8, 4))), init("ws", np.ones((8, 3)))])
    assert probability_outputs(model.graph) == {"det"}


def test_channel_axes_and_the_group_statistic():
    assert channel_axes(1) == (None,) and channel_axes(2) == (1,) and channel_axes(4) == (1, 3)
    rng = np.random.default_rng(3)
    dense = rng.standard_normal((64, 200))
    pruned = dense + 0.01 * rng.standard_normal(dense.shape)
    pruned[:, 17] = 0.0  # one channel of 200 destroyed: the group is the worst 2 (1 %)
    acc = ChannelAccumulator()
    acc.add(pruned[:32], dense[:32])
    acc.add(pruned[32:], dense[32:])  # streamed over batches
    summary = acc.summary()
    assert summary.worst[0] == 17 and summary.worst_errors[0] == pytest.approx(1.0, abs=0.2)
    assert summary.error == pytest.approx((summary.worst_errors[0] + summary.worst_errors[1]) / 2)
    assert 0.4 < summary.error < 0.7


def test_a_constant_channel_is_finite_and_log_odds_are_clipped():
    dense = np.ones((10, 2), np.float32)
    acc = ChannelAccumulator()
    acc.add(dense + 1e-3, dense)
    assert np.isfinite(acc.summary().error)
    assert np.isfinite(log_odds(np.array([0.0, 1.0]))).all()
