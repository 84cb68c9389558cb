"""Calibration statistics: the input Hessian H = XᵀX of every candidate, from ORT runs.

As in ORT's quantization calibrator, the activations feeding each prunable node are exposed as
extra outputs and the calibration batches are run; each batch updates one streaming
:class:`~onnxprune.reconstruct.hessian.HessianAccumulator` per candidate (float64, K×K memory,
independent of the data size). Conv inputs become im2col patches honouring strides, pads and
dilations. Nodes sharing a weight accumulate into one H, since one weight serves all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from onnxprune.calib.dataset import CalibSet
from onnxprune.calib.stitch import StitchedRunner
from onnxprune.graph.candidates import Candidate
from onnxprune.reconstruct.hessian import HessianAccumulator, im2col_patches

logger = logging.getLogger("onnxprune")


def reduction_rows(candidate: Candidate, activation: np.ndarray) -> np.ndarray:
    """The candidate's activation as rows of its reduction dimension: [rows, K].

    MatMul/Gemm: X[..., K] flattened (Gemm with transA: X[K, M] transposed first). Conv: im2col
    patches [N·OH·OW, C·kh·kw], matching the canonical weight reshaped to [O, C·kh·kw].
    """
    if candidate.op == "Conv":
        attrs = candidate.attrs
        return im2col_patches(
            activation, attrs["kernel"], attrs["strides"], attrs["pads"], attrs["dilations"]
        )
    if candidate.op == "Gemm" and candidate.attrs.get("trans_a"):
        activation = activation.T
    return activation.reshape(-1, activation.shape[-1])


def collect_hessians(
    runner: StitchedRunner,
    candidates: Sequence[Candidate],
    calib: CalibSet,
    weights: Mapping[str, np.ndarray] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, HessianAccumulator]:
    """H per candidate name over all calibration batches.

    Args:
        runner: stitched runner exposing every site's activation of ``candidates``.
        candidates: whose Hessians to collect.
        calib: the calibration batches.
        weights: replacement (pruned) weights by candidate name, for sequential mode.
        progress: called with (batches done, total).
    """
    accumulators = {c.name: HessianAccumulator(c.reduction_dim) for c in candidates}
    names = [site.activation for c in candidates for site in c.sites]
    for done, feed in enumerate(calib.batches, start=1):
        values = runner.run(feed, weights, outputs=list(dict.fromkeys(names)))
        masks = padding_masks(feed)
        for cand in candidates:
            for site in cand.sites:
                activation = values[site.activation]
                mask = masks.get(tuple(activation.shape[:2])) if activation.ndim == 3 else None
                if mask is not None and cand.op != "Conv":
                    activation = activation[mask]  # [real tokens, K]
                accumulators[cand.name].add_batch(reduction_rows(cand, activation))
        if progress:
            progress(done, len(calib.batches))
    return accumulators


def padding_masks(feed: Mapping[str, np.ndarray]) -> dict[tuple[int, ...], np.ndarray]:
    """0/1 integer or bool inputs of shape [batch, sequence] (an ``attention_mask``), by shape.

    Padded positions carry no signal, yet on MiniLM's calibration sentences they were ~80% of the
    rows: statistics (and fidelity) over them fit the padding, not the text. Activations of shape
    [batch, sequence, features] that match a mask's shape keep only the real positions.
    """
    masks = {}
    named = {k: v for k, v in feed.items() if "mask" in k.lower()}
    for value in (named or feed).values():  # token type ids are 0/1 too: prefer "…mask"
        value = np.asarray(value)
        if value.ndim != 2 or not (np.issubdtype(value.dtype, np.integer)
                                   or value.dtype == np.bool_):
            continue
        if value.size and np.isin(value, (0, 1)).all() and value.any():
            masks[tuple(value.shape)] = value.astype(bool)
    return masks


def poorly_conditioned(H: np.ndarray, threshold: float = 1e-6) -> tuple[int, int]:
    """(numerical rank, K) of H: a rank well below K means the data does not excite all inputs."""
    diag = np.diag(H)
    if not np.any(diag > 0):
        return 0, H.shape[0]
    eig = np.linalg.eigvalsh(H)
    rank = int(np.sum(eig > threshold * eig.max()))
    return rank, H.shape[0]
