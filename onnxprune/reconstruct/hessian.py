"""Layer Hessians from calibration activations, and im2col for Conv inputs.

The OBS/SparseGPT reconstruction of a layer ``Y = W·x`` only needs the second moment of its input,
``H = (2/n)·Σ xᵀx`` over all n calibration rows. :class:`HessianAccumulator` streams batches into
that running average the way SparseGPT's ``add_batch`` does (rescale by n/(n+m), then add), so
memory stays at one K×K float64 matrix however much calibration data there is.

A Conv is a MatMul over image patches, so its Hessian is the same statistic over the im2col patches
of its input; :func:`im2col_patches` produces them in the column order of the flattened Conv weight
``W[O, C, kh, kw].reshape(O, -1)`` (column ``c·kh·kw + i·kw + j``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger("onnxprune")


class HessianAccumulator:
    """Running average ``H = (2/n)·Σ xᵀx`` of one layer's inputs, in float64.

    One object per prunable layer. Float64 because H is summed over many batches and later
    Cholesky-factorized; float32 accumulation loses the small eigen-directions that OBS relies on.

    Args:
        columns: K, the layer's reduction dimension (MatMul: rows of W[K, N]; Conv: C·kh·kw).
    """

    def __init__(self, columns: int) -> None:
        if columns < 1:
            raise ValueError(f"columns must be positive, got {columns}")
        self.columns = int(columns)
        self._H = np.zeros((self.columns, self.columns), dtype=np.float64)
        self._sum = np.zeros(self.columns, dtype=np.float64)
        self._samples = 0

    def add_batch(self, x: np.ndarray) -> None:
        """Add a batch of input rows.

        Args:
            x: [..., K] activations; leading dims (batch, sequence, or the rows of im2col patches)
                are flattened into rows, each row one sample of the layer's input vector.

        Raises:
            ValueError: the last dim is not K or the batch holds NaN/inf (which would silently
                poison every later solve of this layer).
        """
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[-1] != self.columns:
            raise ValueError(f"expected activations [..., {self.columns}], got {x.shape}")
        rows = x.reshape(-1, self.columns).astype(np.float64, copy=False)
        m = rows.shape[0]
        if m == 0:
            return
        if not np.isfinite(rows).all():
            raise ValueError("activations contain NaN or inf; the Hessian would be meaningless")
        n = self._samples
        self._H *= n / (n + m)
        self._sum += rows.sum(axis=0)
        self._samples = n + m
        rows = rows * np.sqrt(2.0 / self._samples)
        self._H += rows.T @ rows

    @property
    def H(self) -> np.ndarray:
        """[K, K] current Hessian, a read-only view (copy it before modifying)."""
        view = self._H.view()
        view.flags.writeable = False
        return view

    @property
    def first_moment(self) -> np.ndarray:
        """[K] ``(2/n)·Σ x``: the inputs' mean on H's scale (for a bias riding along in H)."""
        return self._sum * (2.0 / self._samples) if self._samples else self._sum.copy()

    @property
    def samples(self) -> int:
        """Number of input rows accumulated so far (n)."""
        return self._samples


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int | np.integer):
        return int(value), int(value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must have 2 values, got {value}")
    return pair  # type: ignore[return-value]


def im2col_patches(
    x: np.ndarray,
    kernel: int | Sequence[int],
    strides: int | Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: int | Sequence[int] = (1, 1),
) -> np.ndarray:
    """Image patches of a 2-D Conv input, one row per output pixel.

    For a group=1 Conv with weight ``W[O, C, kh, kw]``,
    ``patches @ W.reshape(O, -1).T`` reshaped to [N, OH, OW, O] (then transposed to NCHW) equals
    the Conv output, which is why the Conv's Hessian is accumulated over these rows. For
    ``group > 1``, slice the input channels of one group first and call this per group (each group
    is its own layer with its own Hessian).

    Args:
        x: [N, C, H, W] input.
        kernel: (kh, kw).
        strides: (sh, sw).
        pads: ONNX order ``[top, left, bottom, right]`` (``[x1_begin, x2_begin, x1_end, x2_end]``),
            zero padding. Resolve ``auto_pad`` into explicit pads before calling.
        dilations: (dh, dw).

    Returns:
        [N·OH·OW, C·kh·kw] patches in x's dtype; rows ordered (n, oh, ow), columns
        ``c·kh·kw + i·kw + j`` like the flattened Conv weight.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"im2col needs a 4-D [N, C, H, W] input, got {x.shape}")
    kh, kw = _pair(kernel, "kernel")
    sh, sw = _pair(strides, "strides")
    dh, dw = _pair(dilations, "dilations")
    if len(pads) != 4:
        raise ValueError(f"pads must be [top, left, bottom, right], got {pads}")
    top, left, bottom, right = (int(p) for p in pads)
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(top, left, bottom, right) < 0:
        raise ValueError("kernel, strides and dilations must be positive and pads non-negative")
    n, c, h, w = x.shape
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"kernel {kh}x{kw} (dilated) does not fit the padded {h}x{w} input")
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    cols = np.empty((n, oh, ow, c, kh, kw), dtype=x.dtype)
    # One strided slice per kernel tap: kh·kw vectorized copies instead of a loop over pixels.
    for i in range(kh):
        for j in range(kw):
            tap = xp[
                :,
                :,
                i * dh : i * dh + sh * (oh - 1) + 1 : sh,
                j * dw : j * dw + sw * (ow - 1) + 1 : sw,
            ]
            cols[:, :, :, :, i, j] = tap.transpose(0, 2, 3, 1)
    return cols.reshape(n * oh * ow, c * kh * kw)
