"""The user's own metric (``--metric``): what "still doing its job" means for their task.

A metric is a function ``metric(dense, pruned, labels) -> float``: ``dense`` and ``pruned`` map
each output name to that model's outputs on the held-out samples (batches concatenated along
axis 0), ``labels`` is the calibration set's ``__labels__`` (or None), and the score is of the
*pruned* outputs, higher is better. Its drop — ``metric(dense, dense, labels) −
metric(dense, pruned, labels)`` — is what ``--max-metric-drop`` bounds, as NNCF's
``quantize_with_accuracy_control`` and Intel Neural Compressor bound theirs.

Built-ins for the common tasks (``--metric NAME`` or ``NAME:ARG``):

- ``top1``: top-1 accuracy on the labels when there are some, else agreement with the dense
  model's top-1 (the last 2-D float output is the scores).
- ``cosine``: mean cosine of pruned vs dense per position (an embedding, a row), worst output.
- ``rank[:K]``: Spearman correlation of score channel K (default the last) with the dense model's,
  over all samples (for scorers, whose ranking is the job).
- ``detection[:T]``: F1 of the pruned model's detections against the dense model's, for
  YOLO-style ``[B, 4+C, N]`` or ``[B, N, 4+C]`` outputs (cx, cy, w, h, then C class scores):
  score threshold T (default 0.25), class-wise NMS at IoU 0.7, a match is the same class at
  IoU ≥ 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from onnxprune.common.errors import UserError

Outputs = Mapping[str, np.ndarray]
MetricFunction = Callable[[Outputs, Outputs, "np.ndarray | None"], float]

DEFAULT_SCORE_THRESHOLD = 0.25
NMS_IOU = 0.7
MATCH_IOU = 0.5
MAX_DETECTIONS = 300
"""Ultralytics' defaults: confidence 0.25, NMS IoU 0.7, at most 300 detections per image."""


@dataclass(frozen=True)
class Metric:
    """A named metric; calling it checks what the function returns.

    Attributes:
        name: the spec it was made from (``detection``, ``rank:1``, ``mymod:f1``).
        function: ``function(dense, pruned, labels) -> float`` (module docstring).
    """

    name: str
    function: MetricFunction

    def __call__(self, dense: Outputs, pruned: Outputs, labels: np.ndarray | None) -> float:
        try:
            value = self.function(dense, pruned, labels)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - user code: say what failed, no traceback
            raise UserError(f"--metric {self.name}: the metric raised "
                            f"{type(exc).__name__}: {exc}") from None
        try:
            score = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise UserError(f"--metric {self.name}: the metric returned "
                            f"{type(value).__name__}, not a number") from None
        if not math.isfinite(score):
            raise UserError(f"--metric {self.name}: the metric returned {score}, not a finite "
                            "number")
        return score


@dataclass(frozen=True)
class MetricScore:
    """A metric on one set of held-out samples: the dense model's score and the pruned one's."""

    name: str
    dense: float
    pruned: float

    @property
    def drop(self) -> float:
        return self.dense - self.pruned

    def to_json(self) -> dict:
        return {"name": self.name, "dense": self.dense, "pruned": self.pruned, "drop": self.drop}


# ---------------------------------------------------------------------------- built-ins
def _float_outputs(outputs: Outputs) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in outputs.items()
            if np.issubdtype(np.asarray(v).dtype, np.floating)}


def _scores(outputs: Outputs, metric: str) -> tuple[str, np.ndarray]:
    """The last 2-D float output: class scores (logits or probabilities)."""
    for name, value in reversed(list(_float_outputs(outputs).items())):
        if value.ndim == 2:
            return name, value
    raise UserError(f"--metric {metric}: the model has no 2-D float output (class scores "
                    f"[batch, classes]); its outputs: {_shapes(outputs)}")


def _shapes(outputs: Outputs) -> str:
    return ", ".join(f"{k} {list(np.shape(v))}" for k, v in outputs.items())


def top1(dense: Outputs, pruned: Outputs, labels: np.ndarray | None) -> float:
    """Top-1 accuracy on ``labels``, or agreement with the dense model's top-1 without them."""
    name, want = _scores(dense, "top1")
    got = np.argmax(np.asarray(pruned[name]), axis=-1)
    if labels is not None and len(labels) == len(got):
        return float(np.mean(got == np.asarray(labels)))
    return float(np.mean(got == np.argmax(want, axis=-1)))


def cosine(dense: Outputs, pruned: Outputs, labels: np.ndarray | None) -> float:
    """The worst float output's mean per-position cosine with the dense model."""
    worst = 1.0
    for name, want in _float_outputs(dense).items():
        d = want.reshape(-1, want.shape[-1]).astype(np.float64) if want.ndim > 1 \
            else want.reshape(-1, 1).astype(np.float64)
        y = np.asarray(pruned[name], np.float64).reshape(d.shape)
        norms = np.linalg.norm(d, axis=1) * np.linalg.norm(y, axis=1)
        both_zero = (np.linalg.norm(d, axis=1) == 0) & (np.linalg.norm(y, axis=1) == 0)
        cos = np.where(norms > 0, np.sum(d * y, axis=1) / np.where(norms > 0, norms, 1.0),
                       np.where(both_zero, 1.0, 0.0))
        worst = min(worst, float(cos.mean()) if cos.size else 1.0)
    return worst


def rank(channel: int = -1) -> MetricFunction:
    """Spearman correlation of one score channel with the dense model's."""
    from scipy.stats import spearmanr

    def score(dense: Outputs, pruned: Outputs, labels: np.ndarray | None) -> float:
        name, want = _scores(dense, f"rank:{channel}")
        if not -want.shape[1] <= channel < want.shape[1]:
            raise UserError(f"--metric rank:{channel}: output {name!r} has {want.shape[1]} "
                            "channels")
        d, y = want[:, channel], np.asarray(pruned[name])[:, channel]
        if np.ptp(d) == 0:
            raise UserError(f"--metric rank:{channel}: channel {channel} of {name!r} is constant "
                            "on the dense model, so it has no ranking to keep")
        if np.ptp(y) == 0:
            return 0.0
        return float(spearmanr(d, y).statistic)

    return score


def detection(threshold: float = DEFAULT_SCORE_THRESHOLD) -> MetricFunction:
    """F1 of the pruned model's detections against the dense model's (YOLO-style outputs)."""

    def score(dense: Outputs, pruned: Outputs, labels: np.ndarray | None) -> float:
        name, layout = find_detection_output(dense)
        want, got = _rows(dense[name], layout), _rows(pruned[name], layout)
        tp = fp = fn = 0
        found = 0
        for d_rows, y_rows in zip(want, got, strict=True):
            reference = detect(d_rows, threshold)
            candidate = detect(y_rows, threshold)
            found += len(reference[0])
            hits = match_count(reference, candidate)
            tp, fp, fn = tp + hits, fp + len(candidate[0]) - hits, fn + len(reference[0]) - hits
        if found == 0:
            raise UserError(
                f"--metric detection: the dense model detects nothing at score >= {threshold:g} "
                "on the held-out samples, so F1 against it says nothing; use calibration images "
                "with objects in them, or a lower threshold (detection:0.1)")
        return 2 * tp / max(2 * tp + fp + fn, 1)

    return score


def find_detection_output(outputs: Outputs) -> tuple[str, str]:
    """The first YOLO-style output and its layout, ``"channels-first"`` ([B, 4+C, N]) or
    ``"rows"`` ([B, N, 4+C]); the smaller non-batch axis holds the 4+C channels."""
    for name, value in _float_outputs(outputs).items():
        if value.ndim == 3 and min(value.shape[1:]) >= 5 and value.shape[1] != value.shape[2]:
            return name, "channels-first" if value.shape[1] < value.shape[2] else "rows"
    raise UserError("--metric detection needs a YOLO-style output [batch, 4+classes, boxes] or "
                    f"[batch, boxes, 4+classes]; the model's outputs: {_shapes(outputs)}")


def _rows(value: np.ndarray, layout: str) -> np.ndarray:
    """[B, N, 4+C] float64."""
    value = np.asarray(value, np.float64)
    return np.swapaxes(value, 1, 2) if layout == "channels-first" else value


def detect(rows: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's detections: (boxes [D, 4] x1 y1 x2 y2, scores [D], classes [D]) after the score
    threshold and class-wise NMS, best first. ``rows``: [N, 4+C] (cx, cy, w, h, class scores)."""
    scores_all = rows[:, 4:]
    classes = np.argmax(scores_all, axis=1)
    scores = scores_all[np.arange(len(rows)), classes]
    keep = scores >= threshold
    cx, cy, w, h = (rows[keep, i] for i in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    scores, classes = scores[keep], classes[keep]
    order = np.argsort(-scores, kind="stable")
    boxes, scores, classes = boxes[order], scores[order], classes[order]
    kept: list[int] = []
    suppressed = np.zeros(len(boxes), bool)
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        kept.append(i)
        if len(kept) == MAX_DETECTIONS:
            break
        rest = np.arange(i + 1, len(boxes))
        same = rest[(classes[rest] == classes[i]) & ~suppressed[rest]]
        suppressed[same[iou(boxes[i:i + 1], boxes[same])[0] > NMS_IOU]] = True
    return boxes[kept], scores[kept], classes[kept]


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] intersection over union of x1 y1 x2 y2 boxes."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_count(reference: tuple, candidate: tuple) -> int:
    """Candidate detections matched one-to-one to reference ones (same class, IoU ≥
    :data:`MATCH_IOU`), greedily in the candidate's score order."""
    ref_boxes, _, ref_classes = reference
    boxes, _, classes = candidate
    if not len(ref_boxes) or not len(boxes):
        return 0
    overlap = iou(boxes, ref_boxes)
    overlap[classes[:, None] != ref_classes[None, :]] = 0.0
    taken = np.zeros(len(ref_boxes), bool)
    hits = 0
    for row in overlap:
        row = np.where(taken, 0.0, row)
        best = int(np.argmax(row))
        if row[best] >= MATCH_IOU:
            taken[best] = True
            hits += 1
    return hits


BUILTIN: dict[str, tuple[Callable[..., MetricFunction], type | None, str]] = {
    "top1": (lambda: top1, None, "top-1 accuracy (labels) or agreement with the dense model"),
    "cosine": (lambda: cosine, None, "mean cosine with the dense model, worst output"),
    "rank": (rank, int, "Spearman of score channel K (rank:K, default the last) vs dense"),
    "detection": (detection, float, "F1 vs dense of YOLO-style detections (detection:T, "
                                    "score threshold T, default 0.25)"),
}
"""Built-in metrics: name -> (factory, the type of its optional argument, what it measures)."""


def load_metric(spec: str) -> Metric:
    """A :class:`Metric` from ``--metric``: a built-in (``rank:1``) or user code
    (``module:callable``, ``path/to/file.py:callable``).

    Raises:
        UserError: an unknown name, a bad argument, or user code that cannot be loaded.
    """
    spec = spec.strip()
    name, sep, arg = spec.partition(":")
    if name in BUILTIN:
        factory, arg_type, _ = BUILTIN[name]
        if not sep:
            return Metric(spec, factory())
        if arg_type is None:
            raise UserError(f"--metric {name} takes no argument (got {spec!r})")
        try:
            value = arg_type(arg)
        except ValueError:
            raise UserError(f"bad --metric {spec!r}: {arg!r} is not "
                            f"{'an integer' if arg_type is int else 'a number'}") from None
        if name == "detection" and not 0.0 < value < 1.0:
            raise UserError(f"bad --metric {spec!r}: the score threshold must be in (0, 1)")
        return Metric(spec, factory(value))
    if not sep:
        raise UserError(f"unknown --metric {spec!r}: one of {', '.join(BUILTIN)}, or "
                        "MODULE:CALLABLE / FILE.py:CALLABLE for your own")
    from onnxprune.common.plugin import import_attribute

    function = import_attribute(spec, "--metric")
    if not callable(function):
        raise UserError(f"--metric {spec}: {type(function).__name__} is not callable")
    return Metric(spec, function)


__all__ = ["BUILTIN", "Metric", "MetricScore", "load_metric", "top1", "cosine", "rank",
           "detection"]
