"""The balanced block layout: whole weight blocks removed, re-packed into a smaller dense compute.

MatMul/Gemm, W[K, N]: blocks of ``bk`` (reduction) x ``bn`` (outputs). Every group of ``bn`` output
columns keeps the same number ``keep`` of its K/bk blocks (balanced), so the graph gathers
``keep·bk`` inputs per group and runs one batched MatMul on a packed ``[N/bn, keep·bk, bn]``
weight (:func:`~onnxprune.graph.rewrite.block_gather_matmul`).

Conv, W[O, C, kh, kw]: blocks of ``bi`` input channels (all their kernel taps) x ``bo`` output
channels. Every group of ``bo`` output channels keeps ``keep`` of the C/bi input-channel blocks;
the graph gathers those channels and runs a Conv with ``group = O/bo``
(:func:`~onnxprune.graph.rewrite.conv_gather_grouped`). For Conv the option's params use the same
names as for MatMul: ``bk`` = ``bi`` (input-channel block), ``bn`` = ``bo`` (output-channel block).

The level of an option is exact: ``1 − keep·bk / K`` (Conv: ``1 − keep·bi / C``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from onnxprune.graph import rewrite
from onnxprune.layouts.base import (
    ALL_PROVIDERS,
    DEFAULT_LEVELS,
    LayoutOption,
    PrunedWeight,
    from_rows,
)

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from onnxprune.graph.candidates import Candidate
    from onnxprune.reconstruct.obs import ObsSolver

logger = logging.getLogger("onnxprune")

MATMUL_BLOCK_SIZES: tuple[int, ...] = (16, 32, 64, 128)
CONV_BLOCK_SIZES: tuple[int, ...] = (8, 16, 32, 64)


class Block:
    """Balanced block sparsity, materialized as gather + batched MatMul / grouped Conv.

    Args:
        sizes: block sizes tried for ``bk`` and ``bn`` of MatMul/Gemm weights.
        conv_sizes: block sizes tried for ``bi`` and ``bo`` of Conv weights.
    """

    name: ClassVar[str] = "block"
    fast_on: ClassVar[frozenset[str]] = ALL_PROVIDERS

    def __init__(
        self,
        sizes: Sequence[int] = MATMUL_BLOCK_SIZES,
        conv_sizes: Sequence[int] = CONV_BLOCK_SIZES,
    ) -> None:
        self.sizes = tuple(sorted(set(sizes)))
        self.conv_sizes = tuple(sorted(set(conv_sizes)))

    def options(
        self, candidate: Candidate, levels: Iterable[float] = DEFAULT_LEVELS
    ) -> tuple[list[LayoutOption], str | None]:
        """Every (bk, bn, keep) with bk | K, bn | N and 1 <= keep < K/bk, for the given levels.

        ``keep = round((1 − level)·K/bk)`` clamped to [1, K/bk − 1]; duplicates are dropped, and the
        option's level is the exact one of its ``keep``. Block sizes that do not divide the weight
        are skipped (no padding).
        """
        levels = tuple(levels)
        if candidate.op == "Conv":
            units, outputs, sizes = (
                candidate.weight.shape[1],
                candidate.weight.shape[0],
                self.conv_sizes,
            )
            what = f"Conv with C={units} input and O={outputs} output channels"
        else:
            units, outputs = candidate.weight.shape
            sizes = self.sizes
            what = f"weight K={units} x N={outputs}"
        bks = [b for b in sizes if units % b == 0 and units // b >= 2]
        bns = [b for b in sizes if outputs % b == 0]
        if not bks or not bns:
            return [], (
                f"{what}: no block size in {list(sizes)} divides "
                + ("the reduction dim at least twice" if not bks else "the output dim")
            )
        options: list[LayoutOption] = []
        for bk in bks:
            blocks = units // bk
            for bn in bns:
                seen: set[int] = set()
                for level in levels:
                    keep = min(max(round((1.0 - level) * blocks), 1), blocks - 1)
                    if keep in seen:
                        continue
                    seen.add(keep)
                    options.append(
                        LayoutOption(
                            self.name,
                            1.0 - keep / blocks,
                            (("bk", bk), ("bn", bn), ("keep", keep)),
                        )
                    )
        if not options:
            return [], f"{what}: no level given"
        return options, None

    def solve(self, candidate: Candidate, solver: ObsSolver, option: LayoutOption) -> PrunedWeight:
        """Balanced block mask and OBS reconstruction via ``solver.solve_block``."""
        bk, bn, keep = option.param("bk"), option.param("bn"), option.param("keep")
        col_unit = int(np.prod(candidate.weight.shape[2:])) if candidate.op == "Conv" else 1
        solution = solver.solve_block(bk, bn, keep, col_unit=col_unit)
        return PrunedWeight(
            option,
            from_rows(candidate, solution.mask),
            from_rows(candidate, solution.weight),
            float(solution.err),
        )

    def materialize(self, graph: gs.Graph, candidate: Candidate, pruned: PrunedWeight) -> None:
        """Rewrite the candidate's nodes as gather + batched MatMul (or grouped Conv)."""
        option = pruned.option
        bk, bn, keep = option.param("bk"), option.param("bn"), option.param("keep")
        if candidate.op == "Conv":
            channel_index, packed = pack_conv(pruned.weight, pruned.mask, bk, bn, keep)
            rewrite.conv_gather_grouped(graph, candidate, channel_index, packed)
        else:
            index, packed = pack_matmul(pruned.weight, pruned.mask, bk, bn, keep)
            rewrite.block_gather_matmul(graph, candidate, index, packed, bk)


def _select_blocks(kept: np.ndarray, keep: int) -> np.ndarray:
    """[groups, keep] ascending block indices from a [groups, blocks] kept-block table.

    A group with fewer than ``keep`` kept blocks is padded with its first unkept blocks (their
    weights are zero, so the result stays exact).

    Raises:
        ValueError: a group keeps more than ``keep`` blocks (not a balanced block mask).
    """
    if not 1 <= keep < kept.shape[1]:
        raise ValueError(f"keep={keep} must be in [1, {kept.shape[1] - 1}] blocks")
    counts = kept.sum(axis=1)
    if np.any(counts > keep):
        raise ValueError(
            f"mask keeps up to {int(counts.max())} blocks in a group, more than keep={keep}: "
            f"not a balanced block mask"
        )
    # Kept blocks first (stable: ascending index), then unkept ones as padding; re-sort ascending.
    order = np.argsort(~kept, axis=1, kind="stable")[:, :keep]
    return np.sort(order, axis=1)


def _check_zero_outside(blocks: np.ndarray, selected: np.ndarray) -> None:
    """Raise if ``blocks`` [groups, nblocks, ...] has a non-zero outside the selected blocks."""
    outside = blocks[~selected]
    if np.any(outside != 0):
        raise ValueError("the pruned weight has non-zero entries outside its kept blocks")


def pack_matmul(
    weight: np.ndarray, mask: np.ndarray, bk: int, bn: int, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pack a block-pruned W[K, N] for :func:`~onnxprune.graph.rewrite.block_gather_matmul`.

    Args:
        weight: float32 [K, N], zero outside the kept blocks.
        mask: bool [K, N], True = kept, constant on ``bk x bn`` blocks.
        bk, bn: block shape; keep: blocks kept per group of ``bn`` output columns.

    Returns:
        index: int64 [N/bn, keep], K-blocks read by each output group (ascending).
        packed: float32 [N/bn, keep·bk, bn].
    """
    k_dim, n_dim = weight.shape
    nk, groups = k_dim // bk, n_dim // bn
    # [groups, nk, bk, bn]: block (j, g) of W is tiles[g, j].
    tiles = weight.reshape(nk, bk, groups, bn).transpose(2, 0, 1, 3)
    kept = mask.reshape(nk, bk, groups, bn).any(axis=(1, 3)).T
    index = _select_blocks(kept, keep)
    selected = np.zeros_like(kept)
    np.put_along_axis(selected, index, True, axis=1)
    _check_zero_outside(tiles, selected)
    packed = np.take_along_axis(tiles, index[:, :, None, None], axis=1)
    return index.astype(np.int64), packed.reshape(groups, keep * bk, bn).astype(np.float32)


def pack_conv(
    weight: np.ndarray, mask: np.ndarray, bi: int, bo: int, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pack a block-pruned Conv W[O, C, kh, kw] for :func:`~.rewrite.conv_gather_grouped`.

    Args:
        weight: float32 [O, C, kh, kw], zero outside the kept blocks.
        mask: bool, same shape, constant on (``bo`` output x ``bi`` input channel) blocks.
        bi, bo: input- and output-channel block sizes; keep: input blocks kept per output block.

    Returns:
        channel_index: int64 [O/bo · keep · bi], the input channels each group reads, in order.
        packed: float32 [O, keep·bi, kh, kw].
    """
    out_channels, in_channels, kh, kw = weight.shape
    groups, nblocks = out_channels // bo, in_channels // bi
    # [groups, nblocks, bo, bi, kh, kw]
    tiles = weight.reshape(groups, bo, nblocks, bi, kh, kw).transpose(0, 2, 1, 3, 4, 5)
    kept = mask.reshape(groups, bo, nblocks, bi * kh * kw).any(axis=(1, 3))
    index = _select_blocks(kept, keep)
    selected = np.zeros_like(kept)
    np.put_along_axis(selected, index, True, axis=1)
    _check_zero_outside(tiles, selected)
    packed = np.take_along_axis(tiles, index[:, :, None, None, None, None], axis=1)
    packed = packed.transpose(0, 2, 1, 3, 4, 5).reshape(out_channels, keep * bi, kh, kw)
    channel_index = (index[:, :, None] * bi + np.arange(bi)).reshape(-1)
    return channel_index.astype(np.int64), packed.astype(np.float32)
