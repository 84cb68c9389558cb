"""Fidelity: how far a pruned model's outputs are from the dense model's, and the bound on it.

- :mod:`~onnxprune.fidelity.measure` — per output, per position, per channel (``compare``);
- :mod:`~onnxprune.fidelity.channels` — the scale-free per-channel measure;
- :mod:`~onnxprune.fidelity.metrics` — the user's own metric (``--metric``) and the built-ins;
- :mod:`~onnxprune.fidelity.bound` — which measures a run bounds, and the search's loss.
"""

from onnxprune.fidelity.bound import FidelityBound, describe
from onnxprune.fidelity.channels import ChannelFidelity
from onnxprune.fidelity.measure import (
    FLOOR,
    Fidelity,
    OutputFidelity,
    Scorer,
    class_scores,
    compare,
)
from onnxprune.fidelity.metrics import Metric, MetricScore, load_metric

__all__ = ["FLOOR", "ChannelFidelity", "Fidelity", "FidelityBound", "Metric", "MetricScore",
           "OutputFidelity", "Scorer", "class_scores", "compare", "describe", "load_metric"]
