"""How far a pruned model's outputs are from the dense model's, on calibration data.

One definition serves both SPDY's search (which allocation is best) and the report (how much was
lost): the task loss (cross-entropy) when labels are given, otherwise the output MSE normalized
by the dense output's energy, so that models with large and small outputs compare alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from onnxprune.calib import CalibSet
from onnxprune.graph.candidates import Candidate
from onnxprune.layouts.base import PrunedWeight
from onnxprune.reconstruct.stitch import StitchedRunner


def class_scores(outputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The last 2-D float output (logits or probabilities), if any."""
    for value in reversed(list(outputs.values())):
        value = np.asarray(value)
        if value.ndim == 2 and np.issubdtype(value.dtype, np.floating):
            return value
    return None


def output_nmse(outputs: Mapping[str, np.ndarray], dense: Mapping[str, np.ndarray]) -> float:
    """Σ over float outputs of ‖y − y_dense‖² / ‖y_dense‖²."""
    total = 0.0
    for name, want in dense.items():
        if np.issubdtype(np.asarray(want).dtype, np.floating):
            denom = float(np.sum(np.square(want))) or 1.0
            total += float(np.sum(np.square(outputs[name] - want))) / denom
    return total


def cross_entropy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy; probabilities are used as they are, logits through a softmax."""
    scores = scores.astype(np.float64)
    is_prob = np.all(scores >= 0) and np.allclose(scores.sum(-1), 1.0, atol=1e-3)
    if is_prob:
        probs = np.clip(scores, 1e-12, 1.0)
    else:
        shifted = scores - scores.max(-1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))))


def loss_function(
    runner: StitchedRunner,
    holdout: CalibSet,
    candidates: Sequence[Candidate],
    database: Mapping[str, Sequence[PrunedWeight]],
) -> Callable[[list[int]], float]:
    """Calibration loss of an allocation (option index per candidate), lower is better."""
    dense_outputs = [runner.run(feed) for feed in holdout.batches]

    def score(choice: list[int]) -> float:
        weights = {c.name: database[c.name][j].weight
                   for c, j in zip(candidates, choice, strict=True)}
        total = 0.0
        for feed, labels, dense in zip(holdout.batches, holdout.labels, dense_outputs,
                                       strict=True):
            outputs = runner.run(feed, weights)
            scores = class_scores(outputs)
            if labels is not None and scores is not None:
                total += cross_entropy(scores, labels)
            else:
                total += output_nmse(outputs, dense)
        return total / max(len(holdout.batches), 1)

    return score


def quality_summary(runner: StitchedRunner, weights: Mapping[str, np.ndarray],
                    calib: CalibSet) -> dict:
    """For the report: output nMSE vs dense, and top-1 accuracy before/after when labelled."""
    errors, dense_hits, pruned_hits, count = [], 0, 0, 0
    for feed, labels in zip(calib.batches, calib.labels, strict=True):
        dense = runner.run(feed)
        pruned = runner.run(feed, weights)
        errors.append(output_nmse(pruned, dense))
        dense_scores, pruned_scores = class_scores(dense), class_scores(pruned)
        if labels is not None and dense_scores is not None:
            dense_hits += int(np.sum(np.argmax(dense_scores, -1) == labels))
            pruned_hits += int(np.sum(np.argmax(pruned_scores, -1) == labels))
            count += len(labels)
    result: dict = {"output_nmse": float(np.mean(errors)) if errors else None}
    if count:
        result.update({"accuracy_dense": dense_hits / count,
                       "accuracy_pruned": pruned_hits / count, "labelled_samples": count})
    return result
