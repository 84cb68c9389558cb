"""Pipeline stage 2: measured latency on the user's execution provider.

- :mod:`~onnxprune.latency.measure`: timing one model (:func:`time_model`) and comparing two in
  interleaved pairs (:func:`bench_pair`), as ``onnxprune bench`` and the verify stage do.
- :mod:`~onnxprune.latency.profile`: ORT's profiler on the whole model, kernels mapped back to
  graph nodes (:func:`profile_model`), and the fixed base time.
- :mod:`~onnxprune.latency.table`: the per-candidate, per-option :class:`LatencyTable` with its
  on-disk cache (:func:`build_latency_table`).
- :mod:`~onnxprune.latency.source`: where a run's speed numbers come from (:class:`TimingSource`;
  the default measures), and :mod:`~onnxprune.latency.synthetic`, a seeded made-up source for
  tests and the fuzzer.
"""

from onnxprune.latency.measure import PairResult, Timing, bench_pair, time_model
from onnxprune.latency.profile import ModelProfile, profile_model
from onnxprune.latency.table import LatencyTable, build_latency_table, default_cache_dir

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
