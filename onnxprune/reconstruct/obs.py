"""One-shot OBS reconstruction (SparseGPT family) in pure numpy.

Given a layer's weight and the Hessian of its calibration inputs, prune the weight to a mask and
update the kept weights so the layer's output moves as little as possible, then report the
normalized layer error ``‖ŴX − WX‖² / ‖WX‖²`` that the allocator minimizes.

Orientation: SparseGPT's. ``W[N, K]`` has rows = outputs and columns = the reduction dimension;
``H[K, K] = (2/n)·Σ xᵀx`` (see :mod:`onnxprune.reconstruct.hessian`). An ONNX MatMul/Gemm weight is
``W[K, N]`` with ``Y = X·W``, so the caller passes its TRANSPOSE; a Conv weight ``W[O, C, kh, kw]``
is passed as ``W.reshape(O, -1)`` (columns ``c·kh·kw + i·kw + j``, matching
:func:`~onnxprune.reconstruct.hessian.im2col_patches`).

The math follows SparseGPT's ``fasterprune`` top to bottom: dead inputs (``diag(H) == 0``) are
made harmless, H is damped by ``percdamp·mean(diag H)``, ``Hinv`` is the upper Cholesky factor of
``H⁻¹``, and the columns are swept in lazy blocks: each column's pruning error ``(w − q)/d`` is
pushed into the later columns of its block, and one matmul pushes a whole block's errors into the
columns after it. :class:`ObsSolver` factorizes once per layer and solves many candidates; layouts
differ only in the mask picker (each layout module owns its own), so :func:`obs_prune` /
:meth:`ObsSolver.prune` are the seam a new layout plugs into; the solver knows no layout.

Two deliberate deviations from the reference:

- Inside a lazy block the reference applies a rank-1 update to the remaining block columns after
  every column; here column i is brought up to date just before it is needed
  (``w_i − Err1[:i]ᵀ·Hinv1[:i, i]``). Same algebra, one matrix-vector product per column instead of
  an outer product, and no per-element Python loops.
- The reference zeroes every dead column. Here dead columns only get zero saliency (they are free
  to prune, and pruning them propagates nothing because they are decoupled in H); where the mask
  keeps them their weights stay, so inputs that were merely silent during calibration still work
  at deployment, and level 0 returns W unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

logger = logging.getLogger("onnxprune")

MaskPicker = Callable[[np.ndarray], np.ndarray]
"""Saliency [N, K'] (larger = more important) -> bool keep mask [N, K']."""

_MAX_DAMP_RETRIES = 8


@dataclass(frozen=True)
class Solution:
    """A solved candidate for one layer (OBS orientation, [N outputs, K reduction]).

    The arrays are read-only; copy them before modifying.

    Attributes:
        mask: bool [N, K], True = kept.
        weight: float32 [N, K], the reconstructed weight, exactly zero where ``mask`` is False.
        err: normalized layer error ``tr((Ŵ−W)H(Ŵ−W)ᵀ) / tr(WHWᵀ)`` with the undamped H, i.e.
            ``‖ŴX − WX‖² / ‖WX‖²`` on the calibration inputs (0 when the dense output is 0).
    """

    mask: np.ndarray
    weight: np.ndarray
    err: float


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _upper_cholesky_of_inverse(H: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU), in SparseGPT's order.

    Cholesky of H, inverse from that factor (LAPACK potri), Cholesky of the inverse. Row i of U,
    divided by U[i, i], is the optimal update of columns > i when column i is removed with columns
    < i already fixed, which is what the sweep needs.

    Raises:
        np.linalg.LinAlgError: H (or its inverse) is not numerically positive definite.
    """
    c, info = lapack.dpotrf(H, lower=0, clean=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"Cholesky of H failed (potrf info={info})")
    inv, info = lapack.dpotri(c, lower=0)
    if info != 0:
        raise np.linalg.LinAlgError(f"inverse of H failed (potri info={info})")
    inv = np.triu(inv) + np.triu(inv, 1).T
    return scipy.linalg.cholesky(inv, lower=False, check_finite=False)


class ObsSolver:
    """OBS/SparseGPT solver for one layer: factorize once, solve many candidates.

    Args:
        W: [N, K] weight, rows = outputs, columns = reduction (transpose of an ONNX MatMul
            weight W[K, N]; a Conv weight reshaped to [O, C·kh·kw]).
        H: [K, K] input Hessian ``(2/n)·Σ xᵀx`` (the scale is irrelevant; errors are normalized).
            The identity gives the data-free variant (no update; error = share of weight energy).
        percdamp: dampening added to the diagonal, as a fraction of ``mean(diag H)``; it keeps the
            Cholesky stable when calibration data is scarce. Raised tenfold (with a warning) until
            the factorization succeeds.
        blocksize: lazy column block of the sweep (SparseGPT's 128); only speed depends on it,
            except for the unstructured layout, whose mask is picked per block.
    """

    def __init__(
        self, W: np.ndarray, H: np.ndarray, percdamp: float = 0.01, blocksize: int = 128
    ) -> None:
        W = np.array(W, dtype=np.float64)
        H = np.array(H, dtype=np.float64)
        if W.ndim != 2:
            raise ValueError(f"W must be [N outputs, K reduction], got {W.shape}")
        rows, columns = W.shape
        if H.shape != (columns, columns):
            raise ValueError(f"H must be [{columns}, {columns}] for W {W.shape}, got {H.shape}")
        if not (np.isfinite(W).all() and np.isfinite(H).all()):
            raise ValueError("W and H must be finite")
        if percdamp < 0 or blocksize < 1:
            raise ValueError(f"need percdamp >= 0 and blocksize >= 1, got {percdamp}, {blocksize}")
        self.rows, self.columns = rows, columns
        self.blocksize = int(blocksize)
        self._W = _frozen(W)
        self._H = _frozen((H + H.T) / 2)
        # Output energy of every row, w_n H w_nᵀ: the channel score and, summed, the denominator
        # of every normalized error.
        self._energy = _frozen(np.einsum("nk,nk->n", W @ self._H, W))
        self._total = float(self._energy.sum())

        # Dead inputs never fired during calibration: any weight on them is free to remove.
        self._dead = _frozen(np.diag(self._H) <= 0)
        Hd = self._H.copy()
        Hd[self._dead, :] = 0.0
        Hd[:, self._dead] = 0.0
        Hd[self._dead, self._dead] = 1.0
        mean_diag = float(np.mean(np.diag(Hd)))
        damp = percdamp * mean_diag
        for attempt in range(_MAX_DAMP_RETRIES + 1):
            Hdamp = Hd.copy()
            Hdamp[np.diag_indices(columns)] += damp
            try:
                Hinv = _upper_cholesky_of_inverse(Hdamp)
                if not np.isfinite(Hinv).all():
                    raise np.linalg.LinAlgError("non-finite inverse Cholesky factor")
                break
            except np.linalg.LinAlgError:
                if attempt == _MAX_DAMP_RETRIES:
                    raise
                damp = max(damp * 10.0, 1e-6 * mean_diag)
                logger.warning(
                    "H [%d x %d] is not positive definite after dampening; retrying with damp=%.3g",
                    columns,
                    columns,
                    damp,
                )
        self.damp = damp
        self._Hinv = _frozen(Hinv)
        self._d = _frozen(np.diag(Hinv).copy())

    # ------------------------------------------------------------------ errors and saliency

    def error_of(self, weight: np.ndarray) -> float:
        """Normalized layer error of ``weight`` [N, K]: ``tr((Ŵ−W)H(Ŵ−W)ᵀ) / tr(WHWᵀ)``.

        Uses the undamped H, so it equals ``‖(Ŵ−W)Xᵀ‖² / ‖WXᵀ‖²`` on the calibration rows X.
        """
        D = np.asarray(weight, dtype=np.float64) - self._W
        if D.shape != self._W.shape:
            raise ValueError(f"weight must be {self._W.shape}, got {D.shape}")
        if self._total <= 0.0:
            return 0.0
        num = float(np.einsum("nk,nk->", D @ self._H, D))
        return max(num, 0.0) / self._total

    def saliency(self) -> np.ndarray:
        """[N, K] OBS saliency ``w² / diag(Hinv)²`` of the original weight (dead columns 0).

        It is the error of removing each weight alone, given the columns before it are fixed and
        the ones after it are free to compensate, which is exactly what the sweep can do.
        """
        S = self._W**2 / self._d[None, :] ** 2
        S[:, self._dead] = 0.0
        return S

    @property
    def hessian(self) -> np.ndarray:
        """[K, K] the undamped input Hessian this solver was built with (read-only)."""
        return self._H

    @property
    def energy(self) -> np.ndarray:
        """[N] output energy ``w_n H w_nᵀ`` of every row (undamped H)."""
        return self._energy

    # ------------------------------------------------------------------ the generic seam

    def prune(self, pick_mask: MaskPicker, window: int | None = None) -> Solution:
        """Prune with any mask picker and reconstruct with the lazy-block OBS sweep.

        Args:
            pick_mask: saliency [N, K'] -> bool keep mask [N, K'] (True = kept).
            window: None picks the whole mask once, up front, from :meth:`saliency` (needed when
                the pattern's constraint spans all of K, as a balanced block layout's does). An
                int picks the mask adaptively, ``window`` columns at a time, from the weights as
                already updated by the sweep (SparseGPT: ``window = blocksize`` for unstructured,
                ``window = m`` for N:M). The lazy block is then rounded down to a multiple of
                ``window`` (at least ``window``) so no window straddles two blocks.

        Returns:
            The :class:`Solution` for the picked mask.
        """
        rows, columns = self.rows, self.columns
        Hinv, d, dead = self._Hinv, self._d, self._dead
        Wt = self._W.T.copy()  # [K, N]: column k of W is a contiguous row here.
        if window is None:
            keep = self._checked(pick_mask(self.saliency()), (rows, columns))
            keep_t = np.ascontiguousarray(keep.T)
            blocksize = self.blocksize
        else:
            if window < 1:
                raise ValueError(f"window must be positive, got {window}")
            keep_t = np.ones((columns, rows), dtype=bool)
            blocksize = max(window, self.blocksize // window * window)

        for i1 in range(0, columns, blocksize):
            i2 = min(i1 + blocksize, columns)
            count = i2 - i1
            W1 = Wt[i1:i2]  # view; column i is overwritten by its final value once swept
            Hinv1 = Hinv[i1:i2, i1:i2]
            Err1 = np.zeros((count, rows))
            pending = False  # any error in this block yet? (all-kept columns cost nothing)
            for i in range(count):
                if window is not None and i % window == 0:
                    j = min(i + window, count)
                    current = W1[i:j]
                    if pending:
                        current = current - Hinv1[:i, i:j].T @ Err1[:i]
                    S = current**2 / d[i1 + i : i1 + j, None] ** 2
                    S[dead[i1 + i : i1 + j]] = 0.0
                    keep_t[i1 + i : i1 + j] = self._checked(pick_mask(S.T), (rows, j - i)).T
                w = W1[i]
                if pending:
                    w = w - Hinv1[:i, i] @ Err1[:i]
                kept = keep_t[i1 + i]
                if kept.all():
                    W1[i] = w
                    continue
                Err1[i] = np.where(kept, 0.0, w) / Hinv1[i, i]
                W1[i] = np.where(kept, w, 0.0)
                pending = True
            if pending and i2 < columns:
                Wt[i2:] -= Hinv[i1:i2, i2:].T @ Err1

        mask = np.ascontiguousarray(keep_t.T)
        weight = np.where(mask, Wt.T, 0.0).astype(np.float32)
        return Solution(_frozen(mask), _frozen(weight), self.error_of(weight))

    @staticmethod
    def _checked(keep: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        keep = np.asarray(keep)
        if keep.shape != shape or keep.dtype != bool:
            raise ValueError(f"mask picker must return bool {shape}, got {keep.dtype} {keep.shape}")
        return keep

    # ------------------------------------------------------------------ whole rows

    def keep_rows(self, pick_rows: Callable[[np.ndarray], np.ndarray]) -> Solution:
        """Keep whole output rows picked from their output energy ``w_n H w_nᵀ`` [N].

        Rows of a layer are independent, so a removed output cannot be compensated inside the
        layer: kept rows stay as they are and the error is the removed share of output energy.
        """
        keep_rows = np.asarray(pick_rows(self._energy), dtype=bool)
        if keep_rows.shape != (self.rows,):
            raise ValueError(f"row picker must return bool [{self.rows}], got {keep_rows.shape}")
        mask = np.broadcast_to(keep_rows[:, None], self._W.shape).copy()
        weight = np.where(mask, self._W, 0.0).astype(np.float32)
        removed = float(self._energy[~keep_rows].sum())
        err = max(removed, 0.0) / self._total if self._total > 0 else 0.0
        return Solution(_frozen(mask), _frozen(weight), err)

    def solve_magnitude(self, mask: np.ndarray) -> Solution:
        """Baseline: apply ``mask`` [N, K] to the original weight with no update."""
        mask = self._checked(np.asarray(mask), self._W.shape).copy()
        weight = np.where(mask, self._W, 0.0).astype(np.float32)
        return Solution(_frozen(mask), _frozen(weight), self.error_of(weight))


def obs_prune(
    W: np.ndarray,
    H: np.ndarray,
    pick_mask: MaskPicker,
    blocksize: int = 128,
    percdamp: float = 0.01,
    window: int | None = None,
) -> Solution:
    """Prune one layer with any mask picker: the seam every layout plugs into.

    A new layout only needs a picker (saliency [N, K'] -> bool keep mask); the Hessian handling,
    the sweep and the error are shared. To solve several candidates of one layer, build one
    :class:`ObsSolver` and call :meth:`ObsSolver.prune` so H is factorized only once.

    Args:
        W: [N, K] weight, rows = outputs (the transpose of an ONNX MatMul weight W[K, N]).
        H: [K, K] input Hessian.
        pick_mask: saliency ``w² / diag(Hinv)²`` -> keep mask (True = kept).
        blocksize: lazy column block of the sweep.
        percdamp: dampening as a fraction of ``mean(diag H)``.
        window: None to pick the mask once up front; an int to pick it adaptively per ``window``
            columns during the sweep (see :meth:`ObsSolver.prune`).

    Returns:
        The :class:`Solution`.
    """
    return ObsSolver(W, H, percdamp=percdamp, blocksize=blocksize).prune(pick_mask, window)
