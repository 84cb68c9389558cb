"""Timing a model on the user's execution provider: one model alone, or two interleaved.

Every timing in onnxprune goes through this module so that the latency table, ``onnxprune bench``
and the verify stage measure the same way:

* The session comes from :func:`onnxprune.common.runtime.make_session` (the user's EP and threads).
* Inputs are bound once with ``io_binding`` (as ``OrtValue`` on the EP's device) and the outputs are
  bound to the device too, so a timed run is ``session.run_with_iobinding`` and nothing else. On
  ORT 1.31 with 2 CPU threads this costs ~2.5 µs per run on a 1-node model against ~4.7 µs for
  ``session.run`` (which converts the feed dict and copies the outputs back every call); that
  difference matters for the tiny isolated nodes the latency table times. The remaining fixed cost
  per run is measured by :func:`run_overhead` and subtracted by the latency table.
* One timed sample is one run, timed with ``time.perf_counter_ns``. The median is the estimate and
  the MAD (scaled to a standard deviation) its spread; a timing stops once the median's standard
  error is below ``rel_tol`` of the median, or at ``max_seconds`` / ``max_repeats``.
* Comparing two models (A = reference, B = candidate) runs them in interleaved pairs whose order
  alternates (AB, BA, AB, ...), so drift on a shared machine hits both alike; the speedup is the
  median of the per-pair ratios ``time_a / time_b``, with its quartiles as the spread.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from onnxprune.common.runtime import RuntimeConfig, make_session

logger = logging.getLogger("onnxprune")

# Standard error of the sample median of n normal draws ≈ _MEDIAN_SE * sigma / sqrt(n);
# sigma is estimated robustly as _MAD_TO_SIGMA * MAD.
_MEDIAN_SE = math.sqrt(math.pi / 2)
_MAD_TO_SIGMA = 1.4826

_DEVICE_PROVIDERS = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}


@dataclass(frozen=True)
class Timing:
    """A robust timing of one model.

    Attributes:
        median_s: median seconds per run.
        mad_s: median absolute deviation of the runs, seconds.
        repeats: number of timed runs.
    """

    median_s: float
    mad_s: float
    repeats: int

    @property
    def rel_se(self) -> float:
        """Estimated standard error of the median, relative to the median."""
        if self.median_s <= 0 or self.repeats <= 0:
            return math.inf
        sigma = _MAD_TO_SIGMA * self.mad_s
        return _MEDIAN_SE * sigma / math.sqrt(self.repeats) / self.median_s

    def to_json(self) -> dict:
        return {"median_s": self.median_s, "mad_s": self.mad_s, "repeats": self.repeats}

    @staticmethod
    def from_json(data: Mapping) -> Timing:
        return Timing(float(data["median_s"]), float(data["mad_s"]), int(data["repeats"]))


@dataclass(frozen=True)
class PairResult:
    """Interleaved A/B comparison; speedup > 1 means B is faster than A.

    Attributes:
        speedup_median: median over pairs of ``time_a / time_b``.
        speedup_q25: 25th percentile of the per-pair ratios.
        speedup_q75: 75th percentile of the per-pair ratios.
        time_a_s: median seconds per run of A.
        time_b_s: median seconds per run of B.
        pairs: number of (A, B) pairs timed.
    """

    speedup_median: float
    speedup_q25: float
    speedup_q75: float
    time_a_s: float
    time_b_s: float
    pairs: int

    def to_json(self) -> dict:
        return {
            "speedup_median": self.speedup_median,
            "speedup_q25": self.speedup_q25,
            "speedup_q75": self.speedup_q75,
            "time_a_s": self.time_a_s,
            "time_b_s": self.time_b_s,
            "pairs": self.pairs,
        }


def _binding_device(runtime: RuntimeConfig) -> tuple[str, int]:
    device = _DEVICE_PROVIDERS.get(runtime.provider, "cpu")
    device_id = int(dict(runtime.provider_options or {}).get("device_id", 0))
    return device, device_id if device != "cpu" else 0


class _Runner:
    """A session with its inputs bound once; calling it runs the model one time."""

    def __init__(
        self,
        model: onnx.ModelProto | bytes | ort.InferenceSession,
        feed: Mapping[str, np.ndarray],
        runtime: RuntimeConfig,
    ) -> None:
        if isinstance(model, ort.InferenceSession):
            self.session = model
        else:
            self.session = make_session(model, runtime)
        device, device_id = _binding_device(runtime)
        self.binding = self.session.io_binding()
        # Keep the OrtValues alive as long as the binding.
        self._values = {}
        names = [i.name for i in self.session.get_inputs()]
        missing = [n for n in names if n not in feed]
        if missing:
            raise ValueError(f"feed lacks the model inputs {missing}")
        for name in names:
            value = ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(feed[name]), device, device_id
            )
            self._values[name] = value
            self.binding.bind_ortvalue_input(name, value)
        for output in self.session.get_outputs():
            self.binding.bind_output(output.name, device, device_id)

    def __call__(self) -> None:
        self.session.run_with_iobinding(self.binding)

    def timed(self) -> float:
        """Run once; seconds taken."""
        start = time.perf_counter_ns()
        self.session.run_with_iobinding(self.binding)
        return (time.perf_counter_ns() - start) * 1e-9


def _summarize(samples: list[float]) -> Timing:
    values = np.asarray(samples, dtype=np.float64)
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median)))
    return Timing(median, mad, len(samples))


def time_runner(
    run: Callable[[], float],
    *,
    warmup: int = 3,
    min_repeats: int = 5,
    max_repeats: int = 200,
    max_seconds: float = 1.0,
    rel_tol: float = 0.02,
) -> Timing:
    """Robust median of ``run()`` (which returns the seconds of one timed call).

    Stops after ``min_repeats`` once the median's standard error / median < ``rel_tol``, or when
    ``max_repeats`` runs or ``max_seconds`` of timed wall time are reached.
    """
    for _ in range(max(warmup, 0)):
        run()
    samples: list[float] = []
    deadline = time.perf_counter() + max_seconds
    min_repeats = max(1, min(min_repeats, max_repeats))
    while len(samples) < max_repeats:
        samples.append(run())
        if len(samples) < min_repeats:
            continue
        if time.perf_counter() >= deadline or _summarize(samples).rel_se < rel_tol:
            break
    return _summarize(samples)


def time_model(
    model: onnx.ModelProto | bytes,
    feed: Mapping[str, np.ndarray],
    runtime: RuntimeConfig,
    *,
    warmup: int = 3,
    min_repeats: int = 5,
    max_repeats: int = 200,
    max_seconds: float = 1.0,
    rel_tol: float = 0.02,
) -> Timing:
    """Time one model on the configured EP: warm up, then repeat until the median is stable.

    Args:
        model: the model (a ModelProto or its serialized bytes).
        feed: a value for every graph input, at the shapes to time.
        runtime: EP, provider options and threads.
        warmup: untimed runs first (allocator arenas, lazy kernel setup).
        min_repeats: timed runs always made.
        max_repeats: timed runs at most.
        max_seconds: wall-clock cap on the timed runs (at least ``min_repeats`` are made).
        rel_tol: stop once the median's estimated standard error is below this fraction of it.

    Returns:
        The median and MAD of the timed runs, in seconds, and how many were made.
    """
    runner = _Runner(model, feed, runtime)
    return time_runner(
        runner.timed,
        warmup=warmup,
        min_repeats=min_repeats,
        max_repeats=max_repeats,
        max_seconds=max_seconds,
        rel_tol=rel_tol,
    )


def _warm_up(runs: int, *runners: _Runner) -> None:
    """Untimed runs of each model, in turn (arenas, lazy kernel setup)."""
    for _ in range(max(runs, 0)):
        for runner in runners:
            runner()


def _timed_pair(first: _Runner, second: _Runner, index: int) -> tuple[float, float]:
    """One interleaved pair of runs, ``(time of first, time of second)``.

    Even pairs run ``first`` first and odd pairs ``second`` first, so a drift or a burst of load
    from elsewhere falls on both models alike and neither always runs on a warmer cache.
    """
    if index % 2 == 0:
        t_first = first.timed()
        return t_first, second.timed()
    t_second = second.timed()
    return first.timed(), t_second


def bench_pair(
    model_a: onnx.ModelProto | bytes,
    model_b: onnx.ModelProto | bytes,
    feed: Mapping[str, np.ndarray],
    runtime: RuntimeConfig,
    *,
    pairs: int = 100,
    min_pairs: int = 5,
    max_seconds: float = 10.0,
    warmup: int = 3,
) -> PairResult:
    """Speedup of B over A, measured in interleaved pairs of runs.

    Pair i runs A then B when i is even and B then A when it is odd, so a slow drift or a burst of
    load from another process affects both models alike; each pair gives one ratio
    ``time_a / time_b`` and the result is the median of the ratios with its quartiles.

    Args:
        model_a: the reference (e.g. the dense input model).
        model_b: the candidate (e.g. the pruned output model); same inputs as A.
        feed: a value for every graph input.
        runtime: EP, provider options and threads.
        pairs: pairs to run at most.
        min_pairs: pairs always run, even past ``max_seconds``.
        max_seconds: wall-clock cap on the timed pairs.
        warmup: untimed runs of each model first.

    Returns:
        Median speedup, its quartiles, the median time per run of each model, and the pair count.
    """
    runner_a = _Runner(model_a, feed, runtime)
    runner_b = _Runner(model_b, feed, runtime)
    _warm_up(warmup, runner_a, runner_b)
    times_a: list[float] = []
    times_b: list[float] = []
    deadline = time.perf_counter() + max_seconds
    min_pairs = max(1, min(min_pairs, pairs))
    for i in range(max(pairs, 1)):
        t_a, t_b = _timed_pair(runner_a, runner_b, i)
        times_a.append(t_a)
        times_b.append(t_b)
        if i + 1 >= min_pairs and time.perf_counter() >= deadline:
            break
    a = np.asarray(times_a)
    b = np.maximum(np.asarray(times_b), 1e-12)
    ratios = a / b
    q25, q50, q75 = (float(x) for x in np.percentile(ratios, [25, 50, 75]))
    return PairResult(
        speedup_median=q50,
        speedup_q25=q25,
        speedup_q75=q75,
        time_a_s=float(np.median(a)),
        time_b_s=float(np.median(times_b)),
        pairs=len(ratios),
    )


@dataclass(frozen=True)
class RatioTiming:
    """A model timed against a reference, interleaved: robust to drift and to load bursts.

    Attributes:
        ratio: median over pairs of ``time_model / time_reference``.
        ratio_rel_se: estimated standard error of ``ratio``, relative to it.
        reference_s: median seconds per run of the reference in this session pair.
        model_s: median seconds per run of the model.
        pairs: pairs timed.
    """

    ratio: float
    ratio_rel_se: float
    reference_s: float
    model_s: float
    pairs: int

    def to_json(self) -> dict:
        return {"ratio": self.ratio, "ratio_rel_se": self.ratio_rel_se,
                "reference_s": self.reference_s, "model_s": self.model_s, "pairs": self.pairs}

    @staticmethod
    def from_json(data: Mapping) -> RatioTiming:
        return RatioTiming(float(data["ratio"]), float(data["ratio_rel_se"]),
                           float(data["reference_s"]), float(data["model_s"]),
                           int(data["pairs"]))


def time_ratio(
    reference: onnx.ModelProto | bytes,
    model: onnx.ModelProto | bytes,
    feed: Mapping[str, np.ndarray],
    runtime: RuntimeConfig,
    *,
    warmup: int = 3,
    min_pairs: int = 5,
    max_pairs: int = 300,
    max_seconds: float = 1.0,
    rel_tol: float = 0.02,
) -> RatioTiming:
    """Time ``model`` interleaved with ``reference`` (same inputs), until the ratio is stable.

    Pairs alternate their order (AB, BA, ...). Stops after ``min_pairs`` once the ratio's median
    has an estimated standard error below ``rel_tol`` of itself, or at ``max_pairs`` /
    ``max_seconds``.
    """
    ref = _Runner(reference, feed, runtime)
    run = _Runner(model, feed, runtime)
    _warm_up(warmup, ref, run)
    times_ref: list[float] = []
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    summary = Timing(0.0, 0.0, 0)
    for i in range(max(max_pairs, 1)):
        t_ref, t_model = _timed_pair(ref, run, i)
        times_ref.append(t_ref)
        times.append(t_model)
        if i + 1 < min_pairs:
            continue
        ratios = np.asarray(times) / np.maximum(np.asarray(times_ref), 1e-12)
        summary = _summarize(list(ratios))
        if summary.rel_se < rel_tol or time.perf_counter() >= deadline:
            break
    if summary.repeats == 0:
        summary = _summarize(list(np.asarray(times) / np.maximum(np.asarray(times_ref), 1e-12)))
    return RatioTiming(summary.median_s, summary.rel_se, float(np.median(times_ref)),
                       float(np.median(times)), len(times))


@dataclass(frozen=True)
class SpeedResult:
    """A speedup measured in several fresh pairs of ORT sessions, as a user will meet it.

    One session's timing is not what a user sees: the same pruned file measured 2.06x in one
    process and 1.26x in another (DESIGN.md). Each entry of ``sessions`` is an interleaved A/B
    comparison in a freshly created pair of sessions; the headline is the median over sessions,
    and a target is judged by :attr:`speedup_low`, the lower quartile over sessions.

    Attributes:
        sessions: one interleaved comparison per fresh session pair.
        feeds: per session, which inputs were fed ("synthetic" or "calibration").
    """

    sessions: tuple[PairResult, ...]
    feeds: tuple[str, ...] = ()

    def _medians(self) -> np.ndarray:
        return np.asarray([s.speedup_median for s in self.sessions], dtype=np.float64)

    @property
    def speedup(self) -> float:
        """Median over sessions of each session's median pair ratio."""
        return float(np.median(self._medians()))

    @property
    def speedup_low(self) -> float:
        """Lower quartile over sessions: the conservative statistic a target must meet."""
        return float(np.percentile(self._medians(), 25))

    @property
    def speedup_min(self) -> float:
        return float(self._medians().min())

    @property
    def speedup_max(self) -> float:
        return float(self._medians().max())

    @property
    def time_a_s(self) -> float:
        return float(np.median([s.time_a_s for s in self.sessions]))

    @property
    def time_b_s(self) -> float:
        return float(np.median([s.time_b_s for s in self.sessions]))

    @property
    def pairs(self) -> int:
        return sum(s.pairs for s in self.sessions)

    def merged(self, other: SpeedResult) -> SpeedResult:
        return SpeedResult(self.sessions + other.sessions, self.feeds + other.feeds)

    def to_json(self) -> dict:
        return {
            "speedup": self.speedup, "speedup_low": self.speedup_low,
            "speedup_min": self.speedup_min, "speedup_max": self.speedup_max,
            "time_a_s": self.time_a_s, "time_b_s": self.time_b_s, "pairs": self.pairs,
            "sessions": [dict(s.to_json(), feed=f) for s, f in
                         zip(self.sessions, self.feeds or ("synthetic",) * len(self.sessions),
                             strict=True)],
        }


def bench_sessions(
    model_a: onnx.ModelProto | bytes,
    model_b: onnx.ModelProto | bytes,
    feeds: Mapping[str, Mapping[str, np.ndarray]],
    runtime: RuntimeConfig,
    *,
    sessions: int = 5,
    seconds: float = 6.0,
    progress: Callable[[int, int], None] | None = None,
) -> SpeedResult:
    """Speedup of B over A in ``sessions`` fresh session pairs (interleaved runs in each).

    Args:
        model_a: the reference (the dense input model).
        model_b: the candidate (the pruned model).
        feeds: named input sets (e.g. "synthetic", "calibration"); sessions take them in turn.
        runtime: EP, provider options and threads.
        sessions: how many fresh session pairs.
        seconds: the wall-clock budget of the timed pairs, over all sessions.
        progress: called with (sessions done, sessions) after each one.
    """
    payload_a = model_a if isinstance(model_a, bytes) else model_a.SerializeToString()
    payload_b = model_b if isinstance(model_b, bytes) else model_b.SerializeToString()
    names = list(feeds)
    results, used = [], []
    sessions = max(1, sessions)
    for index in range(sessions):
        name = names[index % len(names)]
        results.append(bench_pair(payload_a, payload_b, dict(feeds[name]), runtime,
                                  pairs=400, max_seconds=seconds / sessions))
        used.append(name)
        if progress:
            progress(index + 1, sessions)
    return SpeedResult(tuple(results), tuple(used))


def _overhead_model() -> onnx.ModelProto:
    """A one-node model (Identity of one float): all it measures is the cost of a run."""
    from onnxprune.graph.load import stamp_ir_version

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="overhead")],
        "overhead",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return stamp_ir_version(model)


def run_overhead(runtime: RuntimeConfig, *, max_seconds: float = 0.3) -> Timing:
    """Fixed cost of one ``run_with_iobinding`` call on a trivial model (seconds).

    The latency table subtracts it from every isolated timing: it is paid once per session run,
    not once per node, so it belongs to the whole model's fixed part.
    """
    feed = {"x": np.zeros(1, dtype=np.float32)}
    return time_model(
        _overhead_model(),
        feed,
        runtime,
        warmup=20,
        min_repeats=50,
        max_repeats=2000,
        max_seconds=max_seconds,
        rel_tol=0.01,
    )
