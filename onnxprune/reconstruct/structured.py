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

from collections.abc import Sequence
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
    parts: Sequence[tuple[np.ndarray, np.ndarray, int]],
    keeps: Sequence[int],
    *,
    percdamp: float = 0.01,
) -> dict[int, list[ChannelSolution]]:
    """Greedy structured OBS over one channel set read by several consumers (a coupled group).

    Each consumer ``(W, H, group)`` loses the same channels; a channel's cost is the sum over the
    consumers of its OBS loss relative to that consumer's output energy ``tr(W H Wᵀ)``, so a
    consumer with large activations does not decide alone, and each consumer's remaining weights
    get their own optimal update. With one part this is :func:`remove_channels`.

    Returns:
        Per requested keep count, one solution per part (in the parts' order).
    """
    built = [_Part(W, H, group, percdamp) for W, H, group in parts]
    channels = {p.channels for p in built}
    if len(channels) != 1:
        raise ValueError(f"the consumers read different channel counts: {sorted(channels)}")
    return _greedy(built, keeps)


class _Part:
    """One consumer's state in a greedy pass: its weight, its inverse Hessian, its columns."""

    def __init__(self, W: np.ndarray, H: np.ndarray, group: int, percdamp: float, *,
                 bias: np.ndarray | None = None, mean: np.ndarray | None = None) -> None:
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

    def losses(self, live: np.ndarray) -> np.ndarray:
        """The OBS loss of removing each live channel alone."""
        blocks = self.cols[live]  # [live, group]
        Hinv_blocks = self.Hinv[blocks[:, :, None], blocks[:, None, :]]  # [live, g, g]
        W_blocks = self.W[:, blocks]  # [N, live, g]
        inv_blocks = np.linalg.inv(Hinv_blocks)
        return np.einsum("nlg,lgh,nlh->l", W_blocks, inv_blocks, W_blocks)

    def remove(self, chosen: np.ndarray) -> None:
        """Remove channels ``chosen`` together, with one joint update of the others."""
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


def _greedy(parts: Sequence[_Part], keeps: Sequence[int]) -> dict[int, list[ChannelSolution]]:
    """Remove channels cheapest-first (summed cost over the parts), recording each keep count."""
    channels = parts[0].channels
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
        while alive.sum() > keep:
            live = np.flatnonzero(alive)
            if len(parts) == 1:
                loss = parts[0].losses(live)
            else:  # relative to each consumer's output energy
                loss = sum(p.losses(live) / p.total if p.total > 0 else p.losses(live)
                           for p in parts)
            count = min(per_step, int(alive.sum()) - keep)
            chosen = live[np.argsort(loss)[:count]]
            for part in parts:
                part.remove(chosen)
            alive[chosen] = False
        record(keep)
    return results
