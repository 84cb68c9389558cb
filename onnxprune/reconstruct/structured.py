"""Structured OBS on the consumer: remove whole input channels, update the remaining weights.

Removing a producer's output channel cannot be compensated in the producer, but removing the
matching *input* columns of the consumer can (ZipLM, OBC's structured form): with ``H`` the
consumer's input Hessian and ``M`` the columns of one channel (a MatMul row group of ``group``
features, a conv input channel's ``kh·kw`` taps),

* the loss of removing ``M`` is ``tr(W_M (H⁻¹_MM)⁻¹ W_Mᵀ)``,
* the optimal update of the other columns is ``W −= W_M (H⁻¹_MM)⁻¹ H⁻¹_{M,:}``,
* and ``H⁻¹`` is downdated the same way (``H⁻¹ −= H⁻¹_{:,M} (H⁻¹_MM)⁻¹ H⁻¹_{M,:}``).

One greedy pass removes channels cheapest-first and records the state whenever a requested
number of kept channels is reached, so every level comes from one pass. Several channels are
removed per step (the cheapest ``step`` together, with one joint update), so a 1536-wide FFN
takes a few dozen steps instead of 1536.

A bias column can ride along: with ``mean`` (the consumer input's column means) the Hessian is
augmented by a constant input, the bias is its weight, and the column is never removed, so the
removed channels' mean contribution is folded into the bias as part of the same optimal update.

Orientation as in :mod:`onnxprune.reconstruct.obs`: ``W[N, K]``, rows = outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

STEPS = 48
"""Greedy steps per full pass (channels removed per step = width // STEPS, at least 1)."""


@dataclass(frozen=True)
class ChannelSolution:
    """One level of a structured pass.

    Attributes:
        kept: ascending indices of the kept channels.
        weight: [N, K] updated weight, zero on the removed channels' columns.
        bias: [N] updated bias (None when no bias rode along).
        err: normalized output error ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` (augmented H with a bias).
    """

    kept: np.ndarray
    weight: np.ndarray
    bias: np.ndarray | None
    err: float


def remove_channels(
    W: np.ndarray,
    H: np.ndarray,
    group: int,
    keeps: Sequence[int],
    *,
    bias: np.ndarray | None = None,
    mean: np.ndarray | None = None,
    percdamp: float = 0.01,
) -> dict[int, ChannelSolution]:
    """Greedy structured OBS over channels of ``group`` consecutive columns.

    Args:
        W: [N, K] weight (K = channels · group).
        H: [K, K] input Hessian (second moment of the inputs; the scale cancels).
        group: columns per channel.
        keeps: the kept-channel counts to record (each in [1, channels]).
        bias: [N] bias to update with the removed channels' mean contribution (needs ``mean``).
        mean: [K] input column means on the scale of ``H`` (``HessianAccumulator.first_moment``:
            with ``H = (2/n)·Σ xᵀx`` it is ``(2/n)·Σ x``, and the constant input's entry is 2).
        percdamp: dampening as a fraction of ``mean(diag H)``.

    Returns:
        One solution per requested keep count.
    """
    part = _Part(W, H, group, percdamp, bias=bias, mean=mean)
    return {keep: solutions[0] for keep, solutions in _greedy([part], keeps).items()}


def remove_channels_jointly(
    parts: Sequence[tuple[np.ndarray, np.ndarray, int] | tuple[np.ndarray, np.ndarray, int,
                                                                 np.ndarray | None]],
    keeps: Sequence[int],
    *,
    percdamp: float = 0.01,
    width: int | None = None,
    segments: np.ndarray | None = None,
    counts: Callable[[int], np.ndarray | None] | None = None,
) -> dict[int, list[ChannelSolution]]:
    """Greedy structured OBS over one channel set read by several consumers (a coupled group).

    Each consumer ``(W, H, group)`` loses the same channels; a channel's cost is the sum over the
    consumers of its OBS loss relative to that consumer's output energy ``tr(W H Wᵀ)``, so a
    consumer with large activations does not decide alone, and each consumer's remaining weights
    get their own optimal update. With one part this is :func:`remove_channels`.

    Where Concat and Split move the channels, a part's fourth entry is the group index of each
    of its channel positions (a consumer of a Concat reads some indices twice, a consumer of a
    Split piece only some): removing index *k* removes every position that holds it, and costs
    nothing in a consumer that does not read it (``width``: the group's index count).
    ``segments`` (a segment per group index) and ``counts`` (per keep, how many each segment
    keeps) keep every producer range and Split piece at its share, so none is emptied.

    Returns:
        Per requested keep count, one solution per part (in the parts' order).
    """
    built = [_Part(spec[0], spec[1], spec[2], percdamp,
                   index=spec[3] if len(spec) > 3 else None) for spec in parts]
    for part in built:
        part.extend(width or 0)
    channels = {p.width for p in built}
    if len(channels) != 1:
        raise ValueError(f"the consumers read different channel counts: {sorted(channels)}")
    return _greedy(built, keeps, segments, counts)


class _Part:
    """One consumer's state in a greedy pass: its weight, its inverse Hessian, its columns."""

    def __init__(self, W: np.ndarray, H: np.ndarray, group: int, percdamp: float, *,
                 bias: np.ndarray | None = None, mean: np.ndarray | None = None,
                 index: np.ndarray | None = None) -> None:
        W = np.array(W, dtype=np.float64)
        rows, columns = W.shape
        if columns % group:
            raise ValueError(f"{columns} columns do not split into groups of {group}")
        self.columns = columns
        self.channels = columns // group
        H = np.array(H, dtype=np.float64)
        H = (H + H.T) / 2
        self.with_bias = bias is not None and mean is not None
        if self.with_bias:
            m = np.asarray(mean, dtype=np.float64).reshape(1, columns)
            H = np.block([[H, m.T], [m, np.full((1, 1), 2.0)]])
            W = np.concatenate([W, np.asarray(bias, dtype=np.float64).reshape(rows, 1)], axis=1)
        full = W.shape[1]
        dead = np.diag(H) <= 0
        Hd = H.copy()
        Hd[dead, :] = 0.0
        Hd[:, dead] = 0.0
        Hd[dead, dead] = 1.0
        Hd[np.diag_indices(full)] += percdamp * float(np.mean(np.diag(Hd)))
        self.H, self.W, self.original = H, W, W.copy()
        self.Hinv = np.linalg.inv(Hd)
        self.total = float(np.einsum("nk,nk->", W @ H, W))
        self.cols = np.arange(columns).reshape(self.channels, group)
        self.width = self.channels
        self.blocks: list[np.ndarray] | None = None
        if index is not None and not np.array_equal(index, np.arange(self.channels)):
            index = np.asarray(index, dtype=np.int64)
            if len(index) != self.channels:
                raise ValueError(f"{len(index)} group indices for {self.channels} channels")
            self.width = int(index.max()) + 1
            self.blocks = [self.cols[index == k].reshape(-1) for k in range(self.width)]

    def extend(self, width: int) -> None:
        """Read ``width`` group indices (those past this consumer's own cost nothing)."""
        if width > self.width:
            if self.blocks is None:
                self.blocks = list(self.cols)
            self.blocks += [np.zeros(0, dtype=np.int64)] * (width - self.width)
            self.width = width

    def losses(self, live: np.ndarray) -> np.ndarray:
        """The OBS loss of removing each live channel alone."""
        if self.blocks is not None:
            return self._moved_losses(live)
        return self._block_losses(self.cols[live])

    def _moved_losses(self, live: np.ndarray) -> np.ndarray:
        """:meth:`losses` where channels hold different numbers of columns (none, one or
        several positions): the channels of each column count together."""
        assert self.blocks is not None
        sizes = np.array([len(self.blocks[k]) for k in live])
        out = np.zeros(len(live))
        for size in np.unique(sizes[sizes > 0]):
            at = np.flatnonzero(sizes == size)
            out[at] = self._block_losses(np.stack([self.blocks[k] for k in live[at]]))
        return out

    def _block_losses(self, blocks: np.ndarray) -> np.ndarray:
        """The OBS loss of removing each row of column ``blocks`` [n, g] alone."""
        Hinv_blocks = self.Hinv[blocks[:, :, None], blocks[:, None, :]]  # [live, g, g]
        W_blocks = self.W[:, blocks]  # [N, live, g]
        inv_blocks = np.linalg.inv(Hinv_blocks)
        return np.einsum("nlg,lgh,nlh->l", W_blocks, inv_blocks, W_blocks)

    def remove(self, chosen: np.ndarray) -> None:
        """Remove channels ``chosen`` together, with one joint update of the others."""
        if self.blocks is not None:
            M = np.concatenate([self.blocks[k] for k in chosen])
            if not len(M):
                return
        else:
            M = self.cols[chosen].reshape(-1)
        Hinv, W = self.Hinv, self.W
        solve = np.linalg.solve(Hinv[np.ix_(M, M)], Hinv[M, :])  # (H⁻¹_MM)⁻¹ H⁻¹_{M,:}
        W -= W[:, M] @ solve
        W[:, M] = 0.0
        Hinv -= Hinv[:, M] @ solve
        Hinv[M, :] = 0.0
        Hinv[:, M] = 0.0
        Hinv[M, M] = 1.0

    def solution(self, kept: np.ndarray) -> ChannelSolution:
        delta = self.W - self.original
        err = (max(float(np.einsum("nk,nk->", delta @ self.H, delta)), 0.0) / self.total
               if self.total > 0 else 0.0)
        bias = self.W[:, self.columns].astype(np.float32) if self.with_bias else None
        return ChannelSolution(kept, self.W[:, :self.columns].astype(np.float32), bias, err)


def _greedy(parts: Sequence[_Part], keeps: Sequence[int], segments: np.ndarray | None = None,
            counts: Callable[[int], np.ndarray | None] | None = None,
            ) -> dict[int, list[ChannelSolution]]:
    """Remove channels cheapest-first (summed cost over the parts), recording each keep count;
    with ``segments``, never below a segment's share (``counts``) of each keep."""
    channels = parts[0].width
    wanted = sorted({int(k) for k in keeps if 1 <= int(k) <= channels}, reverse=True)
    results: dict[int, list[ChannelSolution]] = {}
    alive = np.ones(channels, dtype=bool)

    def record(keep: int) -> None:
        kept = np.flatnonzero(alive)
        results[keep] = [part.solution(kept) for part in parts]

    if channels in wanted:
        record(channels)
    per_step = max(1, channels // STEPS)
    for keep in wanted:
        quota = None if segments is None or counts is None else counts(keep)
        while alive.sum() > keep:
            live = np.flatnonzero(alive)
            if quota is not None:
                spare = np.bincount(segments[alive], minlength=len(quota)) - quota
                live = live[spare[segments[live]] > 0]
                if not len(live):
                    break  # every segment at its share (a share that grew as keep fell)
            if len(parts) == 1:
                loss = parts[0].losses(live)
            else:  # relative to each consumer's output energy
                loss = sum(p.losses(live) / p.total if p.total > 0 else p.losses(live)
                           for p in parts)
            count = min(per_step, int(alive.sum()) - keep)
            order = live[np.argsort(loss)]
            if quota is None:
                chosen = order[:count]
            else:  # the cheapest, as far as each segment has channels to spare
                taken: list[int] = []
                for k in order:
                    if spare[segments[k]] > 0:
                        spare[segments[k]] -= 1
                        taken.append(int(k))
                        if len(taken) == count:
                            break
                chosen = np.asarray(taken, dtype=np.int64)
            for part in parts:
                part.remove(chosen)
            alive[chosen] = False
        record(keep)
    return results
