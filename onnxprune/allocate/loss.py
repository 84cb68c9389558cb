"""The loss an allocation is chosen by: the fidelity measure of the exit-0 contract.

SPDY's search, the search for the fastest allocation within the fidelity bound, and the final
check all read the same measures (:class:`onnxprune.fidelity.Fidelity`: per-position and
per-channel errors against the dense model, and the user's metric when one is set), each on its
own part of the calibration data, and the search minimises the bound's own loss
(:meth:`onnxprune.fidelity.FidelityBound.loss`): what it optimises is what the user is promised.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onnxprune.calib import CalibSet
from onnxprune.fidelity import Fidelity, Metric, Scorer, compare
from onnxprune.fidelity.channels import probability_outputs
from onnxprune.fidelity.measure import score_metric
from onnxprune.reconstruct.collect import padding_masks
from onnxprune.reconstruct.stitch import StitchedRunner


def fidelity_scorer(runner: StitchedRunner, data: CalibSet, metric: Metric | None = None
                    ) -> Scorer:
    """Fidelity of replacement weights on ``data``.

    The dense outputs, and the metric's dense score, are computed once, here: a metric that
    cannot score this model fails now, before any long work.
    """
    dense_outputs = [runner.run(feed) for feed in data.batches]
    probabilities = probability_outputs(runner.model.graph)
    masks = [padding_masks(feed) for feed in data.batches]
    dense_score = None if metric is None else score_metric(
        metric, list(zip(dense_outputs, dense_outputs, data.labels, strict=True))).dense

    def score(weights: Mapping[str, np.ndarray]) -> Fidelity:
        return compare(
            ((runner.run(feed, weights), dense, labels, mask)
             for feed, dense, labels, mask in zip(data.batches, dense_outputs, data.labels, masks,
                                                  strict=True)),
            metric, dense_score, probabilities,
        )

    return score
