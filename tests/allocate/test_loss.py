"""The calibration losses the search minimizes and the report shows."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.allocate.loss import class_scores, cross_entropy, output_nmse


def test_cross_entropy_accepts_logits_and_probabilities_alike():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    labels = np.array([0, 1])
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert cross_entropy(logits, labels) == pytest.approx(cross_entropy(probs, labels))
    expected = -np.mean(np.log(probs[[0, 1], [0, 1]]))
    assert cross_entropy(logits, labels) == pytest.approx(expected)


def test_output_nmse_is_normalized_and_skips_integer_outputs():
    dense = {"y": np.array([3.0, 4.0]), "label": np.array([1, 2])}
    pruned = {"y": np.array([3.0, 3.0]), "label": np.array([7, 7])}
    assert output_nmse(pruned, dense) == pytest.approx(1.0 / 25.0)
    assert output_nmse(dense, dense) == 0.0


def test_class_scores_takes_the_last_2d_float_output():
    outputs = {"label": np.array([1, 2]), "probabilities": np.ones((2, 10), np.float32),
               "hidden": np.ones((2, 3, 4), np.float32)}
    assert class_scores(outputs).shape == (2, 10)
    assert class_scores({"label": np.array([1])}) is None
