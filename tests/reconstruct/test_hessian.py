"""Tests of onnxprune/reconstruct/hessian.py: streaming Hessian and Conv im2col."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.reconstruct.hessian import HessianAccumulator, im2col_patches


def test_streaming_equals_one_go() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((301, 24)).astype(np.float32)
    streamed = HessianAccumulator(24)
    for start, stop in [(0, 7), (7, 7), (7, 100), (100, 250), (250, 301)]:
        streamed.add_batch(X[start:stop])
    whole = HessianAccumulator(24)
    whole.add_batch(X)
    X64 = X.astype(np.float64)
    expected = 2.0 / len(X) * X64.T @ X64
    assert streamed.samples == whole.samples == 301
    np.testing.assert_allclose(streamed.H, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(whole.H, expected, rtol=1e-12, atol=1e-12)
    assert streamed.H.dtype == np.float64


def test_leading_dims_are_flattened() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 3, 8))
    acc = HessianAccumulator(8)
    acc.add_batch(x)
    rows = x.reshape(-1, 8)
    assert acc.samples == 30
    np.testing.assert_allclose(acc.H, 2.0 / 30 * rows.T @ rows, rtol=1e-12)


def test_bad_batches_are_refused() -> None:
    acc = HessianAccumulator(4)
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        acc.add_batch(np.zeros((3, 5)))
    bad = np.ones((2, 4))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        acc.add_batch(bad)
    assert acc.samples == 0
    with pytest.raises(ValueError):
        acc.H[0, 0] = 1.0  # read-only view of the running state


def _naive_conv(
    x: np.ndarray,
    weight: np.ndarray,
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilations: tuple[int, int],
) -> np.ndarray:
    """Direct ONNX Conv (group=1) by its definition: explicit index math, no padded copy."""
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    sh, sw = strides
    top, left, bottom, right = pads
    dh, dw = dilations
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, o, oh, ow))
    for r in range(oh):
        for s in range(ow):
            for i in range(kh):
                for j in range(kw):
                    hi = r * sh - top + i * dh
                    wj = s * sw - left + j * dw
                    if 0 <= hi < h and 0 <= wj < w:
                        y[:, :, r, s] += x[:, :, hi, wj] @ weight[:, :, i, j].T
    return y


@pytest.mark.parametrize("seed", range(8))
def test_im2col_matches_direct_conv(seed: int) -> None:
    rng = np.random.default_rng(seed)
    kh, kw = (int(v) for v in rng.integers(1, 4, size=2))
    strides = tuple(int(v) for v in rng.integers(1, 3, size=2))
    dilations = tuple(int(v) for v in rng.integers(1, 3, size=2))
    pads = tuple(int(v) for v in rng.integers(0, 3, size=4))
    n, c, o = 2, int(rng.integers(1, 4)), 3
    h, w = int(rng.integers(6, 10)), int(rng.integers(5, 9))
    x = rng.standard_normal((n, c, h, w))
    weight = rng.standard_normal((o, c, kh, kw))

    patches = im2col_patches(x, (kh, kw), strides, pads, dilations)
    expected = _naive_conv(x, weight, strides, pads, dilations)
    _, _, oh, ow = expected.shape
    assert patches.shape == (n * oh * ow, c * kh * kw)
    got = (patches @ weight.reshape(o, -1).T).reshape(n, oh, ow, o).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_im2col_column_order_and_dtype() -> None:
    # One pixel, 1x1 output: the patch row is the flattened input in c·kh·kw + i·kw + j order.
    x = np.arange(2 * 2 * 3, dtype=np.float32).reshape(1, 2, 2, 3)
    patches = im2col_patches(x, (2, 3))
    assert patches.dtype == np.float32
    np.testing.assert_array_equal(patches, x.reshape(1, -1))


def test_im2col_refuses_kernel_larger_than_input() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        im2col_patches(np.zeros((1, 1, 2, 2)), (3, 3))
