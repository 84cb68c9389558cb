"""Pipeline stage 2: measured latency on the user's execution provider.

- :mod:`~onnxprune.latency.measure`: timing one model (:func:`time_model`) and comparing two in
  interleaved pairs (:func:`bench_pair`), as ``onnxprune bench`` and the verify stage do.
- :mod:`~onnxprune.latency.profile`: ORT's profiler on the whole model, kernels mapped back to
  graph nodes (:func:`profile_model`), and the fixed base time.
- :mod:`~onnxprune.latency.table`: the per-candidate, per-option :class:`LatencyTable`;
  :mod:`~onnxprune.latency.build` measures it (:func:`build_latency_table`), with its helpers
  :mod:`~onnxprune.latency.isolated`, :mod:`~onnxprune.latency.refine`,
  :mod:`~onnxprune.latency.whole_model` and :mod:`~onnxprune.latency.in_graph`, and
  :mod:`~onnxprune.latency.cache` keeps every measurement on disk.
- :mod:`~onnxprune.latency.anchor`: the Amdahl bound measured on the all-fastest model, and
  :mod:`~onnxprune.latency.in_context`: shared weights' savings measured in the whole model;
  both time models from :mod:`~onnxprune.latency.random_masks`.
- :mod:`~onnxprune.latency.source`: where a run's speed numbers come from (:class:`TimingSource`;
  the default measures), and :mod:`~onnxprune.latency.synthetic`, a seeded made-up source for
  tests and the fuzzer.
"""

from onnxprune.latency.build import build_latency_table
from onnxprune.latency.cache import default_cache_dir
from onnxprune.latency.measure import PairResult, Timing, bench_pair, time_model
from onnxprune.latency.profile import ModelProfile, profile_model
from onnxprune.latency.table import LatencyTable

__all__ = [
    "LatencyTable",
    "ModelProfile",
    "PairResult",
    "Timing",
    "bench_pair",
    "build_latency_table",
    "default_cache_dir",
    "profile_model",
    "time_model",
]
