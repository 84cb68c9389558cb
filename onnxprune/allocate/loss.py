"""The loss an allocation is chosen by: the fidelity measure of the exit-0 contract.

SPDY's search, the search for the fastest allocation within the fidelity bound, and the final
check all read the same measures (:class:`onnxprune.fidelity.Fidelity`: per-position and
per-channel errors against the dense model, and the user's metric when one is set), each on its
own part of the calibration data, and the search minimises the bound's own loss
(:meth:`onnxprune.fidelity.FidelityBound.loss`): what it optimises is what the user is promised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx

from onnxprune.calib.collect import padding_masks
from onnxprune.calib.dataset import CalibSet
from onnxprune.calib.stitch import StitchedRunner
from onnxprune.common.runtime import make_session
from onnxprune.fidelity import Fidelity, Metric, compare
from onnxprune.fidelity.channels import probability_outputs
from onnxprune.fidelity.measure import score_metric


class FidelityScorer:
    """Fidelity on ``data``: of replacement weights (``scorer(weights)``, through the stitched
    model) or of a whole model (``scorer.of_model(model)``, e.g. one whose every weight was
    tuned by global recovery).

    The dense outputs, and the metric's dense score, are computed once, here: a metric that
    cannot score this model fails now, before any long work.
    """

    def __init__(self, runner: StitchedRunner, data: CalibSet, metric: Metric | None = None
                 ) -> None:
        self.runner, self.data, self.metric = runner, data, metric
        self.dense_outputs = [runner.run(feed) for feed in data.batches]
        self.probabilities = probability_outputs(runner.model.graph)
        self.masks = [padding_masks(feed) for feed in data.batches]
        self.dense_score = None if metric is None else score_metric(
            metric, list(zip(self.dense_outputs, self.dense_outputs, data.labels,
                             strict=True))).dense

    def __call__(self, weights: Mapping[str, np.ndarray]) -> Fidelity:
        return self._compare(lambda feed: self.runner.run(feed, weights))

    def of_model(self, model: onnx.ModelProto) -> Fidelity:
        session = make_session(model, self.runner.runtime)
        names = self.runner.model_outputs

        def run(feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return dict(zip(names, session.run(names, dict(feed)), strict=True))

        return self._compare(run)

    def _compare(self, run: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
                 ) -> Fidelity:
        data = self.data
        return compare(
            ((run(feed), dense, labels, mask)
             for feed, dense, labels, mask in zip(data.batches, self.dense_outputs, data.labels,
                                                  self.masks, strict=True)),
            self.metric, self.dense_score, self.probabilities,
        )


def fidelity_scorer(runner: StitchedRunner, data: CalibSet, metric: Metric | None = None
                    ) -> FidelityScorer:
    """Fidelity of replacement weights (or of a model) on ``data``; see :class:`FidelityScorer`."""
    return FidelityScorer(runner, data, metric)
