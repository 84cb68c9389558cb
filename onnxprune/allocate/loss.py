"""The loss an allocation is chosen by: the fidelity measure of the exit-0 contract.

SPDY's search, the search for the fastest allocation within the fidelity bound, and the final
check all compare the same number (:attr:`onnxprune.fidelity.Fidelity.error`, the worst model
output's mean per-position relative error against the dense model), each on its own part of the
calibration data: what the search optimises is what the user is promised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from onnxprune.calib import CalibSet
from onnxprune.fidelity import Fidelity, Scorer, compare
from onnxprune.graph.candidates import Candidate
from onnxprune.layouts.base import PrunedWeight
from onnxprune.reconstruct.collect import padding_masks
from onnxprune.reconstruct.stitch import StitchedRunner


def fidelity_scorer(runner: StitchedRunner, data: CalibSet) -> Scorer:
    """Fidelity of replacement weights on ``data`` (dense outputs computed once, here)."""
    dense_outputs = [runner.run(feed) for feed in data.batches]

    masks = [padding_masks(feed) for feed in data.batches]

    def score(weights: Mapping[str, np.ndarray]) -> Fidelity:
        return compare(
            (runner.run(feed, weights), dense, labels, mask)
            for feed, dense, labels, mask in zip(data.batches, dense_outputs, data.labels, masks,
                                                 strict=True)
        )

    return score


def allocation_loss(
    scorer: Scorer, candidates: Sequence[Candidate],
    database: Mapping[str, Sequence[PrunedWeight]],
) -> Callable[[list[int]], float]:
    """Loss of an allocation (option index per candidate, into ``database``), lower is better."""

    def loss(choice: list[int]) -> float:
        weights = {c.name: database[c.name][j].weight
                   for c, j in zip(candidates, choice, strict=True)}
        return scorer(weights).error

    return loss
