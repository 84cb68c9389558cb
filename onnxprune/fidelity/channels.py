"""Scale-free fidelity: every output channel measured against its own spread on the dense model.

A relative error ``‖y − y_dense‖ / ‖y_dense‖`` over a vector is dominated by its largest entries.
A detector's ``[1, 84, N]`` output packs box coordinates (hundreds of pixels) with class scores
(below 1): the scores can collapse while the vector error stays small. So each *channel* — each
index of a feature axis — is also judged alone, against how much it varies on the dense model:

    channel error_c = RMS(y_c − d_c) / max(std(d_c), 0.1 · RMS(d_c))   (over samples and all
                                                                        other positions)

0 is exact; 1 is what a constant at the channel's mean scores (when the channel varies by more
than a tenth of its magnitude); a channel set to 0 scores at least 1, whatever its scale.
Channels whose dense values are probabilities (all in (0, 1]: sigmoid and softmax outputs) are
compared as log-odds, because a probability near 0 or 1 barely moves while the logit behind it
changes order (a scorer's ranking). Which outputs carry probabilities is read from the graph
(:func:`probability_outputs`: a Sigmoid or Softmax behind only layout ops and Concat), not
guessed from values: a small ReLU output also lies in (0, 1].

Which axis holds the channels is not known from a graph, so both plausible ones are measured:
axis 1 (``[B, C, …]``: NCHW maps, YOLO's ``[B, 4+C, N]``) and the last (``[B, …, C]``: logits,
embeddings, ``[B, N, 4+C]``); the worse is what counts. An output of one value per sample is one
channel. The statistic bounded is a *channel group*: the mean of the worst :data:`TAIL` of an
axis's channels (at least one), so a single destroyed channel of a 4+80-channel head fails, while
one noisy channel among a thousand class logits does not decide alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx

TAIL = 0.01
"""The channel group bounded: the worst 1 % of an axis's channels (at least one)."""
SPREAD_FLOOR = 0.1
"""A channel's spread is floored at this fraction of its own RMS: a channel that barely varies
around a large offset (a bias-dominated logit) is judged against a tenth of its magnitude, not
against a spread that a few samples estimate as nearly 0. A destroyed channel still scores ≥ 1."""
LOGIT_CLIP = 1e-6
"""Probabilities are clipped to [LOGIT_CLIP, 1 − LOGIT_CLIP] before log-odds: float32 resolves
1 − p no finer than ~6e-8, and below one in a million a probability is 0 for any decision."""
PROBABILITY_OPS = frozenset({"Sigmoid", "Softmax", "LogSoftmax", "HardSigmoid"})
"""Ops whose outputs are probabilities (LogSoftmax's are log-probabilities: never in (0, 1],
so their channels stay plain)."""
CARRIER_OPS = frozenset({"Concat", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                         "Identity", "Cast", "Slice", "Gather", "Split", "Expand", "Tile"})
"""Ops an output's probabilities may pass through unchanged in value."""
SHOWN = 5
"""Channel indices named in reports."""


@dataclass(frozen=True)
class ChannelFidelity:
    """The worst channel group of one output.

    Attributes:
        error: the mean channel error of the group (see the module docstring).
        axis: the axis whose channels these are (None: one value per sample).
        channels: how many channels that axis has.
        worst: indices of the worst channels, worst first (at most :data:`SHOWN`, however many
            the group counts).
        worst_errors: their channel errors.
        log_odds: how many of the axis's channels were compared as log-odds.
    """

    error: float
    axis: int | None
    channels: int
    worst: tuple[int, ...]
    worst_errors: tuple[float, ...]
    log_odds: int

    def to_json(self) -> dict:
        return {"channel_error": self.error, "axis": self.axis, "channels": self.channels,
                "worst_channels": list(self.worst),
                "worst_channel_errors": list(self.worst_errors), "log_odds_channels": self.log_odds}

    def where(self) -> str:
        """``channels 4, 7, 9 of axis 1 (of 84)`` — for messages."""
        if self.axis is None:
            return "its one value per sample"
        listed = ", ".join(str(i) for i in self.worst)
        noun = "channel" if len(self.worst) == 1 else "channels"
        return f"{noun} {listed} of axis {self.axis} (of {self.channels})"


def channel_axes(ndim: int) -> tuple[int | None, ...]:
    """The axes read as channel axes for an output of rank ``ndim`` (None: the whole value)."""
    if ndim <= 1:
        return (None,)
    return tuple(sorted({1, ndim - 1}))


def log_odds(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 − p))`` of clipped probabilities, float64."""
    p = np.clip(np.asarray(p, np.float64), LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    return np.log(p) - np.log1p(-p)


def probability_outputs(graph: onnx.GraphProto) -> frozenset[str]:
    """Names of the graph outputs that carry a Sigmoid/Softmax output, possibly through layout
    ops and Concat (YOLO's ``Concat(boxes, Sigmoid(scores))``): their channels whose dense values
    all lie in (0, 1] are compared as log-odds."""
    producer = {out: node for node in graph.node for out in node.output}
    found = set()
    for output in graph.output:
        stack, seen = [output.name], set()
        while stack:
            name = stack.pop()
            node = producer.get(name)
            if node is None or name in seen:
                continue
            seen.add(name)
            if node.op_type in PROBABILITY_OPS:
                found.add(output.name)
                break
            if node.op_type in CARRIER_OPS:
                stack.extend(i for i in node.input[:1 if node.op_type != "Concat" else None] if i)
    return frozenset(found)


@dataclass
class _AxisSums:
    """Running per-channel sums along one axis, in plain values and in log-odds."""

    count: np.ndarray
    plain: np.ndarray  # [3, C]: Σd, Σd², Σ(y−d)²
    odds: np.ndarray  # the same in log-odds
    probability: np.ndarray  # [C] bool: every dense value so far in (0, 1]

    @classmethod
    def empty(cls, channels: int, probabilities: bool) -> _AxisSums:
        return cls(np.zeros(channels), np.zeros((3, channels)), np.zeros((3, channels)),
                   np.full(channels, probabilities))

    def add(self, got: np.ndarray, want: np.ndarray) -> None:
        """``got``, ``want``: [C, M] float64 (a channel per row)."""
        self.count += want.shape[1]
        self.plain += _sums(got, want)
        self.probability &= np.all((want > 0.0) & (want <= 1.0), axis=1)
        if self.probability.any():
            self.odds += _sums(log_odds(got), log_odds(want))

    def errors(self) -> np.ndarray:
        """Per channel error; log-odds where the channel was a probability throughout."""
        sums = np.where(self.probability[None, :], self.odds, self.plain)
        n = np.maximum(self.count, 1.0)
        mean, mean_sq, err_sq = sums[0] / n, sums[1] / n, sums[2] / n
        spread = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
        floor = np.maximum(SPREAD_FLOOR * np.sqrt(mean_sq), np.finfo(np.float32).tiny)
        return np.sqrt(err_sq) / np.maximum(spread, floor)


def _sums(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return np.stack([want.sum(axis=1), np.square(want).sum(axis=1),
                     np.square(got - want).sum(axis=1)])


def _by_channel(value: np.ndarray, axis: int | None) -> np.ndarray:
    """[C, M]: channel ``c`` of ``axis`` in row ``c`` (one row for ``axis=None``)."""
    if axis is None:
        return value.reshape(1, -1)
    return np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)


@dataclass
class ChannelAccumulator:
    """Per-channel statistics of one float output over batches (shapes may vary but the axes'
    lengths must not: an axis whose length changes between batches is dropped).

    ``probabilities``: the output carries probabilities (:func:`probability_outputs`), so its
    channels that stay in (0, 1] are compared as log-odds.
    """

    probabilities: bool = False
    axes: dict[int | None, _AxisSums] = field(default_factory=dict)
    dropped: set[int | None] = field(default_factory=set)

    def add(self, got: np.ndarray, want: np.ndarray) -> None:
        """``got``, ``want``: the pruned and dense values of one batch, same shape, float."""
        if want.size == 0:
            return
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        for axis in channel_axes(want.ndim):
            if axis in self.dropped:
                continue
            channels = 1 if axis is None else want.shape[axis]
            sums = self.axes.setdefault(axis, _AxisSums.empty(channels, self.probabilities))
            if sums.count.shape[0] != channels:
                self.dropped.add(axis)
                del self.axes[axis]
                continue
            sums.add(_by_channel(got, axis), _by_channel(want, axis))

    def summary(self) -> ChannelFidelity | None:
        """The worst channel group over the measured axes (None: nothing measured)."""
        worst: ChannelFidelity | None = None
        for axis, sums in self.axes.items():
            errors = sums.errors()
            order = np.argsort(-errors, kind="stable")
            group = max(1, math.ceil(TAIL * errors.size))
            found = ChannelFidelity(
                float(errors[order[:group]].mean()), axis, int(errors.size),
                tuple(int(i) for i in order[:SHOWN]),
                tuple(float(errors[i]) for i in order[:SHOWN]),
                int(sums.probability.sum()),
            )
            if worst is None or found.error > worst.error:
                worst = found
        return worst


__all__ = ["ChannelAccumulator", "ChannelFidelity", "TAIL", "channel_axes", "log_odds",
           "probability_outputs"]
