"""The channel layout: whole output neurons (MatMul/Gemm columns) or Conv output channels removed.

The node computes only its kept outputs; the original output shape is restored by a Gather over
the channel axis that maps removed channels to a zero channel, plus the full bias
(:func:`~onnxprune.graph.rewrite.channel_restore`), so every consumer (residual Adds and Concats
included) sees exactly the masked-dense output.
:func:`~onnxprune.graph.fold_restores.fold_channel_restores` can afterwards shrink the consumer
instead where the path allows it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from onnxprune.graph import rewrite
from onnxprune.layouts.base import (
    ALL_PROVIDERS,
    DEFAULT_LEVELS,
    LayoutOption,
    PrunedWeight,
    pruned_weight,
    top_k_mask,
)

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from onnxprune.graph.candidates import Candidate
    from onnxprune.reconstruct.obs import ObsSolver

logger = logging.getLogger("onnxprune")


class Channel:
    """Output-channel pruning, materialized as a smaller node plus a shape-restoring Gather."""

    name: ClassVar[str] = "channel"
    fast_on: ClassVar[frozenset[str]] = ALL_PROVIDERS

    def options(
        self, candidate: Candidate, levels: Iterable[float] = DEFAULT_LEVELS
    ) -> tuple[list[LayoutOption], str | None]:
        """One option per distinct ``keep = round((1 − level)·N)`` in [1, N − 1].

        The option's level is exact (``1 − keep/N``) and its params are ``(("keep", keep),)``.
        """
        outputs = candidate.output_dim
        if outputs < 2:
            return [], f"only {outputs} output channel: nothing can be removed"
        options: list[LayoutOption] = []
        seen: set[int] = set()
        for level in levels:
            keep = min(max(round((1.0 - level) * outputs), 1), outputs - 1)
            if keep not in seen:
                seen.add(keep)
                options.append(LayoutOption(self.name, 1.0 - keep / outputs, (("keep", keep),)))
        if not options:
            return [], "no level given"
        return options, None

    @staticmethod
    def label(option: LayoutOption) -> str:
        return f"channel {option.level:.0%}"

    @staticmethod
    def granularity(option: LayoutOption) -> int:
        return 1 << 30

    def solve(self, candidate: Candidate, solver: ObsSolver, option: LayoutOption) -> PrunedWeight:
        """Keep the ``keep`` outputs with the largest output energy ``w_n H w_nᵀ``.

        Rows of a layer are independent, so a removed output cannot be compensated inside the
        layer (a structure compensates it in its consumer); kept rows stay as they are.
        """
        keep = option.param("keep")
        solution = solver.keep_rows(lambda energy: channel_mask(energy, keep))
        return pruned_weight(candidate, option, solution)

    def materialize(self, graph: gs.Graph, candidate: Candidate, pruned: PrunedWeight) -> None:
        """Rewrite the nodes to compute the kept channels and restore the full output shape."""
        kept = kept_channels(candidate, pruned.mask)
        keep = pruned.option.param("keep")
        if kept.size > keep:
            raise ValueError(f"mask keeps {kept.size} channels, more than keep={keep}")
        if kept.size < keep:  # pad with removed channels (their weight is zero): shapes stay fixed
            removed = np.setdiff1d(np.arange(candidate.output_dim), kept)
            kept = np.sort(np.concatenate([kept, removed[: keep - kept.size]]))
        rewrite.channel_restore(graph, candidate, kept, pruned.weight)


def kept_channels(candidate: Candidate, mask: np.ndarray) -> np.ndarray:
    """Ascending indices of the output channels with any kept weight (canonical ``mask``).

    Raises:
        ValueError: a removed channel still has non-kept entries mixed with kept ones, i.e. the
            mask is not a channel mask.
    """
    rows = mask.reshape(mask.shape[0], -1) if candidate.op == "Conv" else mask.T
    any_kept = rows.any(axis=1)
    if not np.all(rows[any_kept].all(axis=1)):
        raise ValueError("not a channel mask: some channel is only partly kept")
    return np.flatnonzero(any_kept).astype(np.int64)


def channel_mask(scores: np.ndarray, keep_channels: int) -> np.ndarray:
    """Keep the ``keep_channels`` output rows with the largest score.

    Unlike the other pickers this takes one score per row, because the right score for removing a
    whole output is its output energy ``w_n H w_nᵀ`` (which no in-layer update can compensate),
    not a sum of per-weight saliencies.

    Args:
        scores: [N] score per output row.
        keep_channels: rows kept, 0 <= keep_channels <= N.

    Returns:
        Bool [N] row keep vector (broadcast it over columns for a weight-shaped mask).
    """
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"channel scores must be a 1-D [N] vector, got {scores.shape}")
    if not 0 <= keep_channels <= scores.shape[0]:
        raise ValueError(f"keep_channels must be in [0, {scores.shape[0]}], got {keep_channels}")
    return top_k_mask(scores, keep_channels)


def check_channel(mask: np.ndarray, keep_channels: int) -> bool:
    """Whether ``mask`` [N, K] keeps exactly ``keep_channels`` whole rows and nothing else."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        return False
    full = mask.all(axis=1)
    empty = ~mask.any(axis=1)
    return bool(np.all(full | empty) and full.sum() == keep_channels)
