"""How faithful a pruned model is to the dense one, per output and per position.

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

The single number a bound or a search compares is :attr:`Fidelity.error`: the worst output's mean
per-position relative error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

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
    """

    name: str
    positions: int
    error_mean: float
    error_p95: float
    error_max: float
    cosine_mean: float | None
    cosine_min: float | None

    def to_json(self) -> dict:
        return {
            "name": self.name, "positions": self.positions, "relative_error_mean": self.error_mean,
            "relative_error_p95": self.error_p95, "relative_error_max": self.error_max,
            "cosine_mean": self.cosine_mean, "cosine_min": self.cosine_min,
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
    """

    samples: int
    outputs: tuple[OutputFidelity, ...]
    accuracy_dense: float | None = None
    accuracy_pruned: float | None = None
    labelled: int = 0

    @property
    def error(self) -> float:
        """The worst output's mean per-position relative error (0 = identical)."""
        return max((o.error_mean for o in self.outputs), default=0.0)

    @property
    def worst_output(self) -> OutputFidelity | None:
        return max(self.outputs, key=lambda o: o.error_mean, default=None)

    @property
    def accuracy_drop(self) -> float | None:
        """Accuracy lost, in percentage points (negative: the pruned model scored higher)."""
        if self.accuracy_dense is None or self.accuracy_pruned is None:
            return None
        return 100.0 * (self.accuracy_dense - self.accuracy_pruned)

    def to_json(self) -> dict:
        return {
            "samples": self.samples, "relative_error": self.error,
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
        )


def class_scores(outputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The last 2-D float output (logits or probabilities), if any: what labels are scored on."""
    for value in reversed(list(outputs.values())):
        value = np.asarray(value)
        if value.ndim == 2 and np.issubdtype(value.dtype, np.floating):
            return value
    return None


def compare(pairs: Iterable[tuple]) -> Fidelity:
    """Fidelity over batches of ``(pruned outputs, dense outputs, labels or None[, masks])``.

    Outputs are matched by name; the dense outputs decide which names are compared. ``masks``
    maps a [batch, sequence] shape to a bool mask of the real (not padded) positions: an output
    whose leading dims match is compared on those positions only.
    """
    accumulators: dict[str, _OutputAccumulator] = {}
    samples = labelled = dense_hits = pruned_hits = 0
    for item in pairs:
        got, want, labels = item[0], item[1], item[2]
        masks = item[3] if len(item) > 3 else {}
        for name, dense_value in want.items():
            y, d = np.asarray(got[name]), np.asarray(dense_value)
            mask = masks.get(tuple(d.shape[:2])) if d.ndim >= 3 else None
            if mask is not None:
                y, d = y[mask], d[mask]
            accumulators.setdefault(name, _OutputAccumulator()).add(y, d)
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
    if not labelled:
        return Fidelity(samples, outputs)
    return Fidelity(samples, outputs, dense_hits / labelled, pruned_hits / labelled, labelled)


@dataclass(frozen=True)
class FidelityBound:
    """What "still doing its job" means for one run; ``None`` fields are not checked.

    Attributes:
        max_error: the largest allowed :attr:`Fidelity.error` (worst output's mean per-position
            relative error).
        max_accuracy_drop: the largest allowed accuracy drop in points (needs labels).
    """

    max_error: float | None = None
    max_accuracy_drop: float | None = None

    @property
    def active(self) -> bool:
        return self.max_error is not None or self.max_accuracy_drop is not None

    def violations(self, fidelity: Fidelity) -> list[str]:
        """Why ``fidelity`` breaks the bound, one phrase per broken part (empty: it holds)."""
        broken = []
        if self.max_error is not None and fidelity.error > self.max_error:
            worst = fidelity.worst_output
            where = f" (output {worst.name!r})" if worst and len(fidelity.outputs) > 1 else ""
            broken.append(f"relative output error {fidelity.error:.3f}{where} > "
                          f"{self.max_error:g}")
        drop = fidelity.accuracy_drop
        if self.max_accuracy_drop is not None and drop is not None and \
                drop > self.max_accuracy_drop + 1e-9:
            broken.append(f"accuracy drop {drop:.1f} points > {self.max_accuracy_drop:g}")
        return broken

    def holds(self, fidelity: Fidelity) -> bool:
        return not self.violations(fidelity)

    def to_json(self) -> dict:
        return {"max_relative_error": self.max_error,
                "max_accuracy_drop_points": self.max_accuracy_drop}


def describe(fidelity: Fidelity) -> str:
    """One line for messages: the error, the worst output's cosine, the accuracies."""
    text = f"relative output error {fidelity.error:.3f}"
    worst = fidelity.worst_output
    if worst is not None and worst.cosine_mean is not None:
        text += f", cosine {worst.cosine_mean:.3f}"
    if fidelity.accuracy_drop is not None:
        text += (f", accuracy {fidelity.accuracy_dense:.3f} -> {fidelity.accuracy_pruned:.3f} "
                 f"({fidelity.labelled} samples)")
    return text


Scorer = Callable[[Mapping[str, np.ndarray]], Fidelity]
"""Fidelity of a set of replacement weights (candidate name → weight) on a fixed input set."""
