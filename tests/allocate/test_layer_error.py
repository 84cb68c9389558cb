"""The DP's per-layer error: each output channel counts over its own energy, so a layer whose
energy sits in a few channels cannot hide the loss of the others (MiniLM-L6's FFNs)."""

from __future__ import annotations

import numpy as np

from onnxprune.layouts.base import LayoutOption, PrunedWeight, from_rows, to_rows
from onnxprune.solve.database import heldout_errors
from tests.layouts.common import only_candidate
from tests.models import matmul_model

OPTION = LayoutOption("unstructured", 0.5)


def _layer(scale_of_first: float = 100.0):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(8, 4)).astype(np.float32)  # ONNX [K=8, N=4]: 4 output channels
    weight[:, 0] *= scale_of_first
    candidate = only_candidate(matmul_model(weight), {"x": (16, 8)})
    x = rng.normal(size=(256, 8))
    return candidate, 2 * x.T @ x / len(x)


def heldout_error(candidate, solution: PrunedWeight, hessian: np.ndarray) -> float:
    """The per-channel error, the one the DP ranks by by default."""
    return heldout_errors(candidate, solution, hessian)[0]


def _with_rows(candidate, rows: np.ndarray) -> PrunedWeight:
    weight = from_rows(candidate, rows.astype(np.float32))
    return PrunedWeight(OPTION, np.ones(weight.shape, bool), weight, 0.0)


def test_a_destroyed_small_channel_outweighs_a_slightly_perturbed_large_one():
    candidate, hessian = _layer()
    rows = to_rows(candidate, candidate.weight).astype(np.float64)
    small_lost = rows.copy()
    small_lost[1] = 0.0  # one of the three small channels gone
    large_nudged = rows.copy()
    large_nudged[0] *= 1.03  # the large channel 3% off
    lost = heldout_error(candidate, _with_rows(candidate, small_lost), hessian)
    nudged = heldout_error(candidate, _with_rows(candidate, large_nudged), hessian)
    np.testing.assert_allclose(lost, 1 / 4, rtol=1e-5)  # one channel of four, wholly
    np.testing.assert_allclose(nudged, 0.03**2 / 4, rtol=1e-4)
    # the energy-weighted error ranks them the other way round: the large channel's 3% is
    # more energy than the whole small channel
    energy = np.einsum("nk,kl,nl->n", rows, hessian, rows)
    assert energy[1] < 0.03**2 * energy[0]
    _, lost_weighted = heldout_errors(candidate, _with_rows(candidate, small_lost), hessian)
    _, nudged_weighted = heldout_errors(candidate, _with_rows(candidate, large_nudged), hessian)
    np.testing.assert_allclose(lost_weighted, energy[1] / energy.sum(), rtol=1e-5)
    assert lost_weighted < nudged_weighted


def test_a_silent_channel_cannot_dominate():
    candidate, hessian = _layer(scale_of_first=1.0)
    rows = to_rows(candidate, candidate.weight).astype(np.float64)
    rows[2] = 0.0
    silent = _with_rows(candidate, rows)
    candidate = only_candidate(matmul_model(from_rows(candidate, rows.astype(np.float32))),
                               {"x": (16, 8)})
    touched = rows.copy()
    touched[2] = 1e-3  # the silent channel now has a tiny output
    error = heldout_error(candidate, _with_rows(candidate, touched), hessian)
    assert 0 < error < 1e-2
    assert heldout_error(candidate, silent, hessian) == 0.0
