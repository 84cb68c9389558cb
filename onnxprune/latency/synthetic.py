"""A seeded, made-up latency source: the whole pipeline without timing anything.

Tests and the fuzzer need the allocation and materialization stages to run on many graphs,
deterministically and fast, which measured timings cannot give. :class:`SyntheticTiming` invents
plausible numbers from the graph alone: a candidate's dense time is proportional to its MACs
(times a seeded factor), an option's time shrinks with the fraction it removes (block layouts
less than proportionally, some options not at all, so dominated and useless options occur), and
a seeded share of the model is fixed. The "measured" speedup of an output is the table's
prediction times a seeded factor around 1, so the contract loop's tightening and refusals are
exercised too. Nothing here is a claim about any machine's speed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from onnxprune.common.runtime import RuntimeConfig
from onnxprune.graph.candidates import GraphAnalysis
from onnxprune.latency.measure import PairResult, SpeedResult
from onnxprune.latency.source import TableProgress
from onnxprune.latency.table import CandidateLatency, LatencyTable
from onnxprune.layouts.base import DENSE, LayoutOption, PrunedWeight
from onnxprune.layouts.registry import option_label

_SECONDS_PER_MAC = 1e-9


def _stable_seed(*parts: object) -> int:
    """A seed from text, stable across processes (``hash`` of a str is salted)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


class SyntheticTiming:
    """Seeded synthetic latency table and speed measurement (see the module docstring).

    Args:
        seed: every number derives from it (and the candidate or call it is for).
        base_share: range of the fixed (unprunable) share of the dense model's time.
        measure_bias: range of the factor between predicted and "measured" speedup.
        sessions_spread: relative spread between the sessions of one measurement.
    """

    persistent = False  # seeded answers: never pooled with measurements

    def __init__(self, seed: int = 0, base_share: tuple[float, float] = (0.05, 0.4),
                 measure_bias: tuple[float, float] = (0.85, 1.05),
                 sessions_spread: float = 0.02) -> None:
        self.seed = seed
        self.base_share = base_share
        self.measure_bias = measure_bias
        self.sessions_spread = sessions_spread
        self.calls = 0

    def _rng(self, *parts: object) -> np.random.Generator:
        return np.random.default_rng(_stable_seed(self.seed, *parts))

    def option_time(self, name: str, dense_s: float, option: LayoutOption) -> float:
        """Seconds of ``option`` for a candidate whose dense time is ``dense_s``."""
        if option == DENSE:
            return dense_s
        rng = self._rng(name, option_label(option))
        kept = 1.0 - option.level
        if option.layout == "structure":
            # A structure shrinks its whole chain: a little more than the node's own share.
            return dense_s * max(kept * rng.uniform(0.8, 1.0), 0.02)
        if option.layout in ("channel",):
            return dense_s * (0.05 + 0.95 * kept) * rng.uniform(0.9, 1.1)
        if option.layout == "block":
            return dense_s * (0.15 + 0.9 * kept) * rng.uniform(0.85, 1.25)
        return dense_s * rng.uniform(0.95, 1.1)  # masked dense: no speedup on stock ORT

    def table(self, model: onnx.ModelProto, analysis: GraphAnalysis,
              options: Mapping[str, Sequence[LayoutOption]], runtime: RuntimeConfig, *,
              cache_dir: Path | None = None, progress: TableProgress | None = None
              ) -> LatencyTable:
        entries = []
        for cand in analysis.candidates:
            dense_s = max(cand.macs, 1) * _SECONDS_PER_MAC * self._rng(cand.name).uniform(0.5, 2)
            wanted = list(dict.fromkeys([DENSE, *options.get(cand.name, ())]))
            timed = tuple((o, self.option_time(cand.name, dense_s, o)) for o in wanted)
            entries.append(CandidateLatency(cand.name, cand.node_names, dense_s, timed,
                                            rel_se=tuple(0.01 for _ in timed)))
        prunable = sum(e.dense_s for e in entries)
        share = self._rng("base").uniform(*self.base_share)
        base = prunable * share / (1.0 - share)
        if progress is not None:
            progress(1, 1, "synthetic latency table")
        return LatencyTable(
            candidates=tuple(entries), base_s=base, dense_total_s=base + prunable, scale=1.0,
            overhead_s=0.0, environment={"synthetic": True, "seed": self.seed},
            fingerprint=f"synthetic-{self.seed}", total_spread=0.01,
        )

    def speed(self, dense: bytes, pruned: onnx.ModelProto | bytes,
              feeds: Mapping[str, Mapping[str, np.ndarray]], runtime: RuntimeConfig, *,
              sessions: int = 5, seconds: float = 0.0,
              chosen: Mapping[str, PrunedWeight] | None = None,
              predicted: float | None = None) -> SpeedResult:
        """The prediction times a seeded bias (1.0 when there is no prediction: uniform modes)."""
        self.calls += 1
        rng = self._rng("speed", self.calls)
        center = (predicted or 1.0) * rng.uniform(*self.measure_bias)
        results = []
        for _ in range(max(1, sessions)):
            s = center * (1.0 + rng.normal(0.0, self.sessions_spread))
            results.append(PairResult(s, s * 0.99, s * 1.01, 1e-3, 1e-3 / s, 1))
        return SpeedResult(tuple(results), tuple("synthetic" for _ in results))
