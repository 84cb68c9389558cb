"""The fidelity bound: which measures a run holds a pruned model to, and how far within it is.

Every measure is optional; each one that is set must hold for exit 0. The same object gives the
loss SPDY's search minimises and the bisection for the fastest model within the bound, so what
the search optimises is what the user is promised (:meth:`FidelityBound.loss`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from onnxprune.fidelity.measure import Fidelity
from onnxprune.fidelity.metrics import Metric

TIE_BREAK = 0.01
"""Weight of the channel error in the loss when only a metric is bounded: a task metric is a step
function of the weights (an F1, an agreement), and allocations it ties are ranked by this."""
REFERENCE_CHANNEL_ERROR = 0.5
"""The channel error the tie-break divides by."""


@dataclass(frozen=True)
class FidelityBound:
    """What "still doing its job" means for one run; ``None`` fields are not checked.

    Attributes:
        max_error: the largest allowed :attr:`Fidelity.error` (worst output's mean per-position
            relative error).
        max_channel_error: the largest allowed :attr:`Fidelity.channel_error` (worst channel
            group, each channel against its own spread on the dense model: no output's scale can
            hide a destroyed channel).
        max_accuracy_drop: the largest allowed accuracy drop in points (needs labels).
        metric: the user's metric (its score is in :attr:`Fidelity.metric`).
        max_metric_drop: the largest allowed drop of ``metric`` (dense score − pruned score).
    """

    max_error: float | None = None
    max_channel_error: float | None = None
    max_accuracy_drop: float | None = None
    metric: Metric | None = None
    max_metric_drop: float | None = None

    @property
    def active(self) -> bool:
        return any(x is not None for x in (self.max_error, self.max_channel_error,
                                           self.max_accuracy_drop, self.max_metric_drop))

    def violations(self, fidelity: Fidelity) -> list[str]:
        """Why ``fidelity`` breaks the bound, one phrase per broken part (empty: it holds)."""
        broken = []
        if self.max_error is not None and fidelity.error > self.max_error:
            worst = fidelity.worst_output
            where = f" (output {worst.name!r})" if worst and len(fidelity.outputs) > 1 else ""
            broken.append(f"relative output error {fidelity.error:.3f}{where} > "
                          f"{self.max_error:g}")
        if self.max_channel_error is not None and \
                fidelity.channel_error > self.max_channel_error:
            worst = fidelity.worst_channel_output
            where = "" if worst is None or worst.channels is None else \
                f" on output {worst.name!r}, {worst.channels.where()}"
            broken.append(f"channel error {fidelity.channel_error:.3f}{where} > "
                          f"{self.max_channel_error:g}")
        drop = fidelity.accuracy_drop
        if self.max_accuracy_drop is not None and drop is not None and \
                drop > self.max_accuracy_drop + 1e-9:
            broken.append(f"accuracy drop {drop:.1f} points > {self.max_accuracy_drop:g}")
        score = fidelity.metric
        if self.max_metric_drop is not None and score is not None and \
                score.drop > self.max_metric_drop + 1e-12:
            broken.append(f"{score.name} {score.dense:.3f} -> {score.pruned:.3f} (drop "
                          f"{score.drop:.3f} > {self.max_metric_drop:g})")
        return broken

    def holds(self, fidelity: Fidelity) -> bool:
        return not self.violations(fidelity)

    def loss(self, fidelity: Fidelity) -> float:
        """How much of the bound ``fidelity`` uses: the largest measure / its limit (≤ 1 within;
        lower is better). With no measure bounded, the relative error itself."""
        terms = []
        if self.max_error is not None:
            terms.append(fidelity.error / self.max_error)
        if self.max_channel_error is not None:
            terms.append(fidelity.channel_error / self.max_channel_error)
        if self.max_metric_drop is not None and fidelity.metric is not None:
            terms.append(fidelity.metric.drop / max(self.max_metric_drop, 1e-3))
        if not terms:
            return fidelity.error
        loss = max(terms)
        if self.max_error is None and self.max_channel_error is None:
            loss += TIE_BREAK * fidelity.channel_error / REFERENCE_CHANNEL_ERROR
        return loss

    def scaled(self, factor: float) -> FidelityBound:
        """The bound with every limit multiplied by ``factor`` (a stricter one below 1)."""

        def scale(limit: float | None) -> float | None:
            return None if limit is None else limit * factor

        return replace(self, max_error=scale(self.max_error),
                       max_channel_error=scale(self.max_channel_error),
                       max_accuracy_drop=scale(self.max_accuracy_drop),
                       max_metric_drop=scale(self.max_metric_drop))

    def to_json(self) -> dict:
        return {"max_relative_error": self.max_error,
                "max_channel_error": self.max_channel_error,
                "max_accuracy_drop_points": self.max_accuracy_drop,
                "metric": None if self.metric is None else self.metric.name,
                "max_metric_drop": self.max_metric_drop}


def describe(fidelity: Fidelity) -> str:
    """One line for messages: the errors, the worst output's cosine, the metric, the accuracies."""
    text = f"relative output error {fidelity.error:.3f}"
    worst = fidelity.worst_output
    if worst is not None and worst.cosine_mean is not None:
        text += f", cosine {worst.cosine_mean:.3f}"
    channel = fidelity.worst_channel_output
    if channel is not None and channel.channels is not None:
        text += f", channel error {fidelity.channel_error:.3f}"
        if len(fidelity.outputs) > 1:
            text += f" ({channel.name})"
    if fidelity.metric is not None:
        text += f", {fidelity.metric.name} {fidelity.metric.dense:.3f} -> " \
                f"{fidelity.metric.pruned:.3f}"
    if fidelity.accuracy_drop is not None:
        text += (f", accuracy {fidelity.accuracy_dense:.3f} -> {fidelity.accuracy_pruned:.3f} "
                 f"({fidelity.labelled} samples)")
    return text


__all__ = ["FidelityBound", "describe"]
