"""Where a pruning run's numbers about speed come from: measured on the EP, or given.

A run needs speed twice: the latency table the allocator plans with, and the final A/B
measurement of a candidate output against the dense model. :class:`MeasuredTiming` (the default)
takes both on the user's execution provider. Passing another :class:`TimingSource` to
:func:`onnxprune.prune` replaces both at once — tests and the fuzzer use
:class:`onnxprune.latency.synthetic.SyntheticTiming`, which is seeded and takes no time, so every
other stage (analysis, structures, options, reconstruction, allocation, materialization,
the exactness check) runs for real and deterministically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx

from onnxprune.common.runtime import RuntimeConfig
from onnxprune.graph.candidates import GraphAnalysis
from onnxprune.latency.build import build_latency_table
from onnxprune.latency.measure import SpeedResult, bench_sessions
from onnxprune.latency.table import LatencyTable
from onnxprune.layouts.base import LayoutOption, PrunedWeight

TableProgress = Callable[[int, int, str], None]


class TimingSource(Protocol):
    """The two speed questions a pruning run asks."""

    persistent: bool
    """Whether its answers are measurements worth keeping across runs (the bound's sessions are
    pooled in the latency cache only then)."""

    def table(self, model: onnx.ModelProto, analysis: GraphAnalysis,
              options: Mapping[str, Sequence[LayoutOption]], runtime: RuntimeConfig, *,
              cache_dir: Path | None, progress: TableProgress | None) -> LatencyTable:
        """The latency table of ``model``'s candidates under ``options``."""
        ...

    def speed(self, dense: bytes, pruned: onnx.ModelProto | bytes,
              feeds: Mapping[str, Mapping[str, np.ndarray]], runtime: RuntimeConfig, *,
              sessions: int, seconds: float, chosen: Mapping[str, PrunedWeight],
              predicted: float | None) -> SpeedResult:
        """Speedup of ``pruned`` over the dense model (``chosen``/``predicted``: what it is)."""
        ...


class MeasuredTiming:
    """The real thing: the cached latency table and fresh-session A/B pairs on the EP."""

    persistent = True

    def table(self, model: onnx.ModelProto, analysis: GraphAnalysis,
              options: Mapping[str, Sequence[LayoutOption]], runtime: RuntimeConfig, *,
              cache_dir: Path | None, progress: TableProgress | None) -> LatencyTable:
        return build_latency_table(model, analysis, {n: list(o) for n, o in options.items()},
                                   runtime, cache_dir=cache_dir, progress=progress)

    def speed(self, dense: bytes, pruned: onnx.ModelProto | bytes,
              feeds: Mapping[str, Mapping[str, np.ndarray]], runtime: RuntimeConfig, *,
              sessions: int, seconds: float, chosen: Mapping[str, PrunedWeight],
              predicted: float | None) -> SpeedResult:
        return bench_sessions(dense, pruned, feeds, runtime, sessions=sessions, seconds=seconds)


MEASURED = MeasuredTiming()
