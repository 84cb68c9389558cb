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
    as_matrix,
    pruned_weight,
    top_k_mask,
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

    @staticmethod
    def label(option: LayoutOption) -> str:
        return f"block {option.param('bk')}x{option.param('bn')} {option.level:.0%}"

    @staticmethod
    def granularity(option: LayoutOption) -> int:
        return option.param("bk") * option.param("bn")

    def solve(self, candidate: Candidate, solver: ObsSolver, option: LayoutOption) -> PrunedWeight:
        """Balanced block mask, picked up front from the saliency summed per block (the
        balanced constraint spans all of K), then the OBS sweep reconstructs the kept blocks."""
        bk, bn, keep = option.param("bk"), option.param("bn"), option.param("keep")
        col_unit = int(np.prod(candidate.weight.shape[2:])) if candidate.op == "Conv" else 1
        solution = solver.prune(lambda S: block_mask(S, bk, bn, keep, col_unit))
        return pruned_weight(candidate, option, solution)

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


def _block_grid(shape: tuple[int, int], bk: int, bn: int, col_unit: int) -> tuple[int, int, int]:
    """Validate a block layout and return (row groups, column blocks, columns per block)."""
    rows, cols = shape
    if bk < 1 or bn < 1 or col_unit < 1:
        raise ValueError(f"block sizes must be positive, got bk={bk}, bn={bn}, col_unit={col_unit}")
    width = bk * col_unit
    if cols % width:
        raise ValueError(
            f"block layout needs the reduction dim ({cols}) to be a multiple of "
            f"bk*col_unit = {bk}*{col_unit}"
        )
    if rows % bn:
        raise ValueError(f"block layout needs the output dim ({rows}) to be a multiple of bn={bn}")
    return rows // bn, cols // width, width


def block_scores(S: np.ndarray, bk: int, bn: int, col_unit: int = 1) -> np.ndarray:
    """Sum of saliency per block: [N/bn, K/(bk·col_unit)] (row group, column block)."""
    S = as_matrix(S)
    groups, blocks, width = _block_grid(S.shape, bk, bn, col_unit)
    return S.reshape(groups, S.shape[0] // groups, blocks, width).sum(axis=(1, 3))


def block_mask(S: np.ndarray, bk: int, bn: int, keep_blocks: int, col_unit: int = 1) -> np.ndarray:
    """Balanced block mask: every group of ``bn`` output rows keeps ``keep_blocks`` column blocks.

    A block is ``bn`` output rows × ``bk·col_unit`` reduction columns, i.e. a ``bk x bn`` block of
    the ONNX MatMul weight ``W[K, N]``. Balanced means every block-column of ``W[K, N]`` keeps the
    same number of blocks, which is what lets the materialized graph gather ``keep_blocks·bk``
    inputs per output group and run one batched MatMul.

    ``col_unit`` makes the same picker serve Conv: with ``col_unit = kh·kw`` a column block is
    ``bk`` whole input channels (all their kernel taps, which are adjacent columns), matching the
    Conv materialization that gathers input channels.

    Args:
        S: [N, K] saliency.
        bk: reduction-dim block size in units of ``col_unit`` columns (input channels for Conv).
        bn: output rows per block.
        keep_blocks: blocks kept per group of ``bn`` rows, 0 <= keep_blocks <= K/(bk·col_unit).
        col_unit: columns per reduction unit (1 for MatMul/Gemm, kh·kw for Conv).

    Returns:
        Bool [N, K] keep mask, constant on every block.

    Raises:
        ValueError: the shape is not a multiple of the block or ``keep_blocks`` is out of range.
    """
    S = as_matrix(S)
    scores = block_scores(S, bk, bn, col_unit)
    groups, blocks = scores.shape
    if not 0 <= keep_blocks <= blocks:
        raise ValueError(f"keep_blocks must be in [0, {blocks}], got {keep_blocks}")
    keep = top_k_mask(scores, keep_blocks)
    rows, cols = S.shape
    expanded = np.broadcast_to(
        keep[:, None, :, None], (groups, rows // groups, blocks, cols // blocks)
    )
    return expanded.reshape(rows, cols)


def check_block(mask: np.ndarray, bk: int, bn: int, keep_blocks: int, col_unit: int = 1) -> bool:
    """Whether ``mask`` is block-constant and keeps exactly ``keep_blocks`` blocks per row group.

    Exactly, not at most: the packed materialization has a fixed number of blocks per group.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        return False
    try:
        groups, blocks, width = _block_grid(mask.shape, bk, bn, col_unit)
    except ValueError:
        return False
    tiles = mask.reshape(groups, mask.shape[0] // groups, blocks, width)
    full = tiles.all(axis=(1, 3))
    empty = ~tiles.any(axis=(1, 3))
    if not np.all(full | empty):
        return False
    return bool(np.all(full.sum(axis=1) == keep_blocks))
