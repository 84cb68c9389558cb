"""Mask pickers: which weights a layout keeps, given how important each weight is.

Every layout differs from the others only in the shape of its mask, so the OBS solver
(:mod:`onnxprune.reconstruct.obs`) takes a picker and leaves the reconstruction itself shared, as
SparseGPT does for unstructured and N:M. A picker is a pure function of a saliency matrix; it knows
nothing about Hessians, so the same picker serves OBS (saliency ``w² / diag(Hinv)²``) and the
magnitude baseline (saliency ``w²``).

Conventions shared by all pickers:

- Orientation is SparseGPT's: ``S[N, K]`` with rows = output neurons / channels and columns = the
  reduction dimension. The caller transposes an ONNX MatMul weight ``W[K, N]``; a Conv weight
  ``W[O, C, kh, kw]`` becomes ``[O, C·kh·kw]`` with column ``c·kh·kw + i·kw + j``, so the
  ``kh·kw`` taps of one input channel are adjacent columns.
- Larger saliency = more important.
- A mask is a bool array, True = KEPT. Every picker keeps an exact count (ties are broken
  deterministically), because the materialized layouts need exact shapes (a balanced
  block layout packs the same number of blocks in every block-column).
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger("onnxprune")


def _as_matrix(S: np.ndarray) -> np.ndarray:
    S = np.asarray(S)
    if S.ndim != 2:
        raise ValueError(f"saliency must be a 2-D [N outputs, K reduction] array, got {S.shape}")
    return S


def _top_along_last(scores: np.ndarray, keep: int) -> np.ndarray:
    """Bool mask of the ``keep`` largest entries along the last axis (exact count per slice).

    ``argpartition`` (linear time) rather than a sort: the unstructured picker runs on every lazy
    block of large layers. The result is deterministic for given scores.
    """
    size = scores.shape[-1]
    mask = np.zeros(scores.shape, dtype=bool)
    if keep <= 0:
        return mask
    if keep >= size:
        mask[...] = True
        return mask
    order = np.argpartition(-scores, keep - 1, axis=-1)[..., :keep]
    np.put_along_axis(mask, order, True, axis=-1)
    return mask


def unstructured_mask(S: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep the top ``1 - sparsity`` fraction of all entries of ``S``.

    The solver applies this per lazy column block (SparseGPT's adaptive mask selection: each block's
    mask is chosen from weights already updated by the earlier blocks), so ``S`` may be a column
    window rather than the whole layer; the picker itself does not care. The number removed is
    ``round(S.size · sparsity)``, exact, so per-window rounding stays below one weight per window.

    Args:
        S: [N, K'] saliency (K' = K or a column window of it).
        sparsity: fraction of entries to remove, in [0, 1].

    Returns:
        Bool [N, K'] keep mask.
    """
    S = _as_matrix(S)
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    n_prune = int(round(S.size * sparsity))
    keep_flat = _top_along_last(S.reshape(-1), S.size - n_prune)
    return keep_flat.reshape(S.shape)


def nm_mask(S: np.ndarray, n: int, m: int) -> np.ndarray:
    """N:M mask: keep the ``n`` largest of every ``m`` consecutive weights along the reduction dim.

    ``n`` counts KEPT weights: 2:4 keeps 2 of 4 (50 % sparse), 1:4 keeps 1 of 4 (75 % sparse). The
    groups run along columns (the reduction dimension) because that is what sparse tensor cores
    require.

    Args:
        S: [N, K'] saliency; ``K'`` must be a multiple of ``m``.
        n: weights kept per group, 1 <= n <= m.
        m: group length.

    Returns:
        Bool [N, K'] keep mask with exactly ``n`` True per group.

    Raises:
        ValueError: ``K'`` is not a multiple of ``m`` or ``n``/``m`` are out of range.
    """
    S = _as_matrix(S)
    if m < 1 or not 1 <= n <= m:
        raise ValueError(f"N:M needs 1 <= n <= m, got n={n}, m={m}")
    rows, cols = S.shape
    if cols % m:
        raise ValueError(f"N:M {n}:{m} needs the reduction dim ({cols}) to be a multiple of {m}")
    groups = S.reshape(rows, cols // m, m)
    return _top_along_last(groups, n).reshape(rows, cols)


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
    S = _as_matrix(S)
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
    S = _as_matrix(S)
    scores = block_scores(S, bk, bn, col_unit)
    groups, blocks = scores.shape
    if not 0 <= keep_blocks <= blocks:
        raise ValueError(f"keep_blocks must be in [0, {blocks}], got {keep_blocks}")
    keep = _top_along_last(scores, keep_blocks)
    rows, cols = S.shape
    expanded = np.broadcast_to(
        keep[:, None, :, None], (groups, rows // groups, blocks, cols // blocks)
    )
    return expanded.reshape(rows, cols)


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
    return _top_along_last(scores, keep_channels)


def check_nm(mask: np.ndarray, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive columns keeps at most ``n`` weights.

    "At most" is the hardware contract (a group may hold more zeros than required).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or m < 1 or mask.shape[1] % m:
        return False
    kept = mask.reshape(mask.shape[0], -1, m).sum(axis=-1)
    return bool(np.all(kept <= n))


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


def check_channel(mask: np.ndarray, keep_channels: int) -> bool:
    """Whether ``mask`` [N, K] keeps exactly ``keep_channels`` whole rows and nothing else."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        return False
    full = mask.all(axis=1)
    empty = ~mask.any(axis=1)
    return bool(np.all(full | empty) and full.sum() == keep_channels)
