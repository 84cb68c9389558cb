"""How faithful a pruned model is to the dense one: per output, per position, per channel.

A pooled number hides damage: one large, easy output (a feature map, an embedding) can swamp a
small destroyed one (box scores, one step of a sequence), and a few large-norm samples can swamp
many small ones. So every float output is compared on its own, and within it *per position*: an
output of shape ``[d0, …, dk]`` is read as ``d0·…·dk-1`` vectors of length ``dk`` (a class-score
row, one sequence step, one embedding, one row of a box tensor; a 1-D output's elements), and
each vector's relative error ``‖y − y_dense‖ / ‖y_dense‖`` and cosine are taken separately. A
vector whose dense norm is tiny next to its output's typical vector (padding, an empty box row) is
measured against a floor of ``FLOOR`` times that output's RMS vector norm, so it cannot produce
an infinite error from noise.

Integer and boolean outputs (indices, class ids, masks) count the fraction of positions that
differ as their error. With labels, top-1 accuracy before and after is reported too.

Per-position errors are still dominated by the largest entries of each vector, so every float
output is also measured per *channel*, against the channel's own spread on the dense model
(:mod:`onnxprune.fidelity.channels`): :attr:`Fidelity.channel_error` is the worst output's worst
channel group. With a user metric (:mod:`onnxprune.fidelity.metrics`) its score on the dense and
the pruned outputs is kept too. :class:`onnxprune.fidelity.bound.FidelityBound` says which of
these a run bounds.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from onnxprune.fidelity.channels import ChannelAccumulator, ChannelFidelity
from onnxprune.fidelity.metrics import Metric, MetricScore

FLOOR = 0.1
"""Denominator floor, as a fraction of the output's RMS per-position norm."""


@dataclass(frozen=True)
class OutputFidelity:
    """Per-position agreement of one model output with the dense model's.

    Attributes:
        name: the output's name.
        positions: how many vectors were compared (summed over samples).
        error_mean: mean over positions of the relative error.
        error_p95: 95th percentile of the per-position relative error.
        error_max: the worst position's relative error.
        cosine_mean: mean over positions of the cosine similarity (None for integer outputs).
        cosine_min: the worst position's cosine similarity (None for integer outputs).
        channels: the worst channel group, each channel against its own spread on the dense
            model (None for integer outputs).
    """

    name: str
    positions: int
    error_mean: float
    error_p95: float
    error_max: float
    cosine_mean: float | None
    cosine_min: float | None
    channels: ChannelFidelity | None = None

    @property
    def channel_error(self) -> float:
        return 0.0 if self.channels is None else self.channels.error

    def to_json(self) -> dict:
        return {
            "name": self.name, "positions": self.positions, "relative_error_mean": self.error_mean,
            "relative_error_p95": self.error_p95, "relative_error_max": self.error_max,
            "cosine_mean": self.cosine_mean, "cosine_min": self.cosine_min,
            "channels": None if self.channels is None else self.channels.to_json(),
        }


@dataclass(frozen=True)
class Fidelity:
    """Agreement of a pruned model with the dense model on a set of inputs.

    Attributes:
        samples: how many input samples were compared.
        outputs: one entry per model output.
        accuracy_dense: top-1 accuracy of the dense model on the labels (None: no labels).
        accuracy_pruned: the same for the pruned model.
        labelled: how many labelled samples the accuracies count.
        metric: the user's metric on these samples (None: no ``--metric``).
    """

    samples: int
    outputs: tuple[OutputFidelity, ...]
    accuracy_dense: float | None = None
    accuracy_pruned: float | None = None
    labelled: int = 0
    metric: MetricScore | None = None

    @property
    def error(self) -> float:
        """The worst output's mean per-position relative error (0 = identical)."""
        return max((o.error_mean for o in self.outputs), default=0.0)

    @property
    def worst_output(self) -> OutputFidelity | None:
        return max(self.outputs, key=lambda o: o.error_mean, default=None)

    @property
    def channel_error(self) -> float:
        """The worst output's worst channel-group error (0 = identical; ~1 = destroyed)."""
        return max((o.channel_error for o in self.outputs), default=0.0)

    @property
    def worst_channel_output(self) -> OutputFidelity | None:
        return max(self.outputs, key=lambda o: o.channel_error, default=None)

    @property
    def accuracy_drop(self) -> float | None:
        """Accuracy lost, in percentage points (negative: the pruned model scored higher)."""
        if self.accuracy_dense is None or self.accuracy_pruned is None:
            return None
        return 100.0 * (self.accuracy_dense - self.accuracy_pruned)

    def to_json(self) -> dict:
        return {
            "samples": self.samples, "relative_error": self.error,
            "channel_error": self.channel_error,
            "metric": None if self.metric is None else self.metric.to_json(),
            "accuracy_dense": self.accuracy_dense, "accuracy_pruned": self.accuracy_pruned,
            "accuracy_drop_points": self.accuracy_drop, "labelled_samples": self.labelled,
            "outputs": [o.to_json() for o in self.outputs],
        }


def _as_positions(value: np.ndarray) -> np.ndarray:
    """``[d0, …, dk]`` → ``[d0·…·dk-1, dk]``; each element of a 1-D output is a position."""
    value = np.asarray(value)
    if value.ndim <= 1:
        return value.reshape(-1, 1)
    return value.reshape(-1, value.shape[-1])


@dataclass
class _OutputAccumulator:
    errors: list[np.ndarray] = field(default_factory=list)
    cosines: list[np.ndarray] = field(default_factory=list)
    integer: bool = False
    channels: ChannelAccumulator = field(default_factory=ChannelAccumulator)

    def add(self, got: np.ndarray, want: np.ndarray) -> None:
        if got.shape != want.shape:
            raise ValueError(f"output shapes differ: {got.shape} vs {want.shape}")
        if not np.issubdtype(want.dtype, np.floating):
            self.integer = True
            mismatch = np.any(_as_positions(got) != _as_positions(want), axis=-1)
            self.errors.append(mismatch.astype(np.float64))
            return
        y = _as_positions(got).astype(np.float64)
        d = _as_positions(want).astype(np.float64)
        if y.size == 0:
            return
        self.channels.add(got, want)
        norm_d = np.linalg.norm(d, axis=-1)
        norm_y = np.linalg.norm(y, axis=-1)
        rms = float(np.sqrt(np.mean(np.square(norm_d))))
        floor = max(FLOOR * rms, np.finfo(np.float32).tiny)
        diff = np.linalg.norm(y - d, axis=-1)
        self.errors.append(diff / np.maximum(norm_d, floor))
        both = norm_d * norm_y
        cosine = np.where(both > 0, np.sum(y * d, axis=-1) / np.where(both > 0, both, 1.0),
                          np.where((norm_d == 0) & (norm_y == 0), 1.0, 0.0))
        self.cosines.append(cosine)

    def summary(self, name: str) -> OutputFidelity:
        errors = np.concatenate(self.errors) if self.errors else np.zeros(0)
        if errors.size == 0:
            return OutputFidelity(name, 0, 0.0, 0.0, 0.0, None, None)
        cos = np.concatenate(self.cosines) if self.cosines and not self.integer else None
        return OutputFidelity(
            name, int(errors.size), float(errors.mean()), float(np.percentile(errors, 95)),
            float(errors.max()), None if cos is None else float(cos.mean()),
            None if cos is None else float(cos.min()),
            None if self.integer else self.channels.summary(),
        )


def class_scores(outputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The last 2-D float output (logits or probabilities), if any: what labels are scored on."""
    for value in reversed(list(outputs.values())):
        value = np.asarray(value)
        if value.ndim == 2 and np.issubdtype(value.dtype, np.floating):
            return value
    return None


def compare(pairs: Iterable[tuple], metric: Metric | None = None,
            metric_dense: float | None = None,
            probabilities: Collection[str] = ()) -> Fidelity:
    """Fidelity over batches of ``(pruned outputs, dense outputs, labels or None[, masks])``.

    Outputs are matched by name; the dense outputs decide which names are compared. ``masks``
    maps a [batch, sequence] shape to a bool mask of the real (not padded) positions: an output
    whose leading dims match is compared on those positions only. With ``metric`` the outputs
    are kept and the metric scored on all of them at the end; ``metric_dense`` is its score on
    the dense outputs when already known (a scorer computes it once). ``probabilities`` names
    the outputs that carry probabilities (compared per channel as log-odds).
    """
    accumulators: dict[str, _OutputAccumulator] = {}
    samples = labelled = dense_hits = pruned_hits = 0
    kept: list[tuple[Mapping, Mapping, np.ndarray | None]] = []
    for item in pairs:
        got, want, labels = item[0], item[1], item[2]
        masks = item[3] if len(item) > 3 else {}
        if metric is not None:
            kept.append((got, want, labels))
        for name, dense_value in want.items():
            y, d = np.asarray(got[name]), np.asarray(dense_value)
            mask = masks.get(tuple(d.shape[:2])) if d.ndim >= 3 else None
            if mask is not None:
                y, d = y[mask], d[mask]
            if name not in accumulators:
                accumulators[name] = _OutputAccumulator(
                    channels=ChannelAccumulator(probabilities=name in probabilities))
            accumulators[name].add(y, d)
        first = next(iter(want.values()), None)
        samples += int(np.asarray(first).shape[0]) if first is not None and np.ndim(first) else 1
        if labels is not None:
            dense_scores, pruned_scores = class_scores(want), class_scores(got)
            if dense_scores is not None and pruned_scores is not None and \
                    len(dense_scores) == len(labels):
                dense_hits += int(np.sum(np.argmax(dense_scores, -1) == labels))
                pruned_hits += int(np.sum(np.argmax(pruned_scores, -1) == labels))
                labelled += len(labels)
    outputs = tuple(acc.summary(name) for name, acc in accumulators.items())
    score = None if metric is None else score_metric(metric, kept, metric_dense)
    if not labelled:
        return Fidelity(samples, outputs, metric=score)
    return Fidelity(samples, outputs, dense_hits / labelled, pruned_hits / labelled, labelled,
                    score)


def concatenate(batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Batches of outputs joined along axis 0 (what a metric is given)."""
    if not batches:
        return {}
    joined = {}
    for name in batches[0]:
        parts = [np.asarray(b[name]) for b in batches]
        if any(p.ndim == 0 for p in parts) or len({p.shape[1:] for p in parts}) > 1:
            raise ValueError(f"output {name!r} changes shape between calibration batches "
                             f"({sorted({p.shape for p in parts})}); a metric needs them "
                             "concatenated: give batches of one shape")
        joined[name] = np.concatenate(parts, axis=0)
    return joined


def score_metric(metric: Metric, kept: Sequence[tuple], dense_score: float | None = None
                 ) -> MetricScore:
    """``metric`` of the pruned outputs (and, unless given, of the dense ones) over all of
    ``kept``: ``(pruned outputs, dense outputs, labels)`` per batch."""
    from onnxprune.common.errors import UserError

    try:
        pruned = concatenate([k[0] for k in kept])
        dense = concatenate([k[1] for k in kept])
    except ValueError as exc:
        raise UserError(f"--metric {metric.name}: {exc}") from None
    labels = None
    if kept and all(k[2] is not None for k in kept):
        labels = np.concatenate([np.asarray(k[2]).reshape(-1) for k in kept])
    if dense_score is None:
        dense_score = metric(dense, dense, labels)
    return MetricScore(metric.name, dense_score, metric(dense, pruned, labels))


Scorer = Callable[[Mapping[str, np.ndarray]], Fidelity]
"""Fidelity of a set of replacement weights (candidate name → weight) on a fixed input set."""
