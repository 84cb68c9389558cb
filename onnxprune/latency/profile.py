"""Per-node times of a whole model from ONNX Runtime's own profiler, and the fixed base time.

The profiler (``SessionOptions.enable_profiling``) records one ``Node`` event named
``<kernel>_kernel_time`` per executed kernel per run. Kernels are nodes of the *optimized* graph,
so their names must be mapped back to the nodes of the model the user gave. The rules, as observed
on ORT 1.31 (CPU EP) with the shipped digits models:

1. Exact name: an unfused node keeps its name (``node_linear_1_kernel_time``).
2. ``fused <name>``: activation fusions (Conv/Gemm + Relu → FusedConv/FusedGemm) prefix the name.
3. ``<name>/<Something>Fusion`` (optionally with a trailing ``/``): MatMul+Add → Gemm
   (``MatMul2/MatMulAddFusion``), MatMul+Mul → FusedMatMul (``node_matmul/MatMulScaleFusion/``).
   Rules 2 and 3 combine: ``fused MatMul/MatMulAddFusion``.
4. ``<tensor>_nchwc``: the NCHWc layout transformer names each rewritten Conv/pool after the
   *original output tensor* of the (possibly fused) node it replaces, e.g. ``relu_nchwc`` for
   Conv+Relu whose Relu wrote ``relu``.
5. Structural cover: anything else (``SkipLayerNormalization``, ``LayerNorm``, ``Attention`` and
   other fusions named without their originals) is mapped through the optimized graph, which the
   profiling session also writes (``optimized_model_filepath``, into the same temporary folder).
   From the kernel's output tensors that exist in the original graph (and the rule-4 tensor), the
   original graph is walked backwards until a tensor that is still live in the optimized graph, a
   tensor another kernel claimed, or a constant. Every original node passed on the way is covered
   by the kernel, so fused bias-adds and activations are covered by their MatMul/Conv kernel.
   Pure layout kernels (``ReorderInput``/``ReorderOutput``, memcpy) cover nothing: their time stays
   in the base time.

The profiler inflates every kernel event by a roughly constant ~3 µs on this kind of machine (a
Relu of one float measures ~0.15 µs per node without the profiler and 3 µs with it; a
[8,128]x[128,128] MatMul ~3 µs and 6 µs; a 1 ms MatMul is unaffected), and the whole run by even
more. So :func:`profiler_inflation` measures that constant once (a chain of trivial kernels, timed
with and without the profiler), every kernel time is reduced by it (never below zero), and the
total is timed separately without the profiler. The inflation matters for small models only.

A kernel's time goes to the heavy nodes (MatMul/Gemm/Conv...) it covers, split by weight size when
there are several (e.g. a fused attention covering Q, K and V), else evenly over the nodes it
covers. Kernels that map to nothing count in the base time.

On CUDA/TensorRT the same events exist (TensorRT runs whole subgraphs as one kernel, which rule 5
then spreads over its heavy nodes); on CUDA the Node events time the host side of asynchronous
launches, so per-node times there are only indicative and a warning is logged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from onnxprune.common.runtime import RuntimeConfig, session_options, synthetic_feed
from onnxprune.graph.candidates import HEAVY_OPS, ensure_node_names
from onnxprune.graph.shapes import BoundInputs
from onnxprune.latency.measure import Timing, _Runner, run_overhead, time_model

logger = logging.getLogger("onnxprune")

_KERNEL_SUFFIX = "_kernel_time"
_FUSED_PREFIX = "fused "
_FUSION_SUFFIX = re.compile(r"/[A-Za-z0-9_]*Fusion/?$")
_NCHWC_SUFFIX = "_nchwc"
_LAYOUT_ONLY_OPS = {"ReorderInput", "ReorderOutput", "MemcpyToHost", "MemcpyFromHost"}


@dataclass(frozen=True)
class KernelTime:
    """One kernel of the optimized graph and the original nodes it stands for.

    Attributes:
        name: the kernel's name as the profiler reports it (without ``_kernel_time``).
        op: the kernel's op type (``FusedGemm``, ``Conv``...).
        provider: the EP that ran it.
        time_s: median seconds per run.
        nodes: original node names it covers (empty: not mapped, counted in the base time).
    """

    name: str
    op: str
    provider: str
    time_s: float
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelProfile:
    """Where one run of a whole model spends its time.

    Attributes:
        total_s: median wall time of one run *without* the profiler (seconds), timed as
            :func:`onnxprune.latency.measure.time_model` does.
        kernel_sum_s: sum over kernels of their (corrected) median times.
        node_times: corrected median seconds per run attributed to each mapped original node.
        kernels: every kernel seen, with its corrected time and its mapping.
        runs: profiled runs.
        profiled_wall_s: median wall time of a run while profiling (for information).
        inflation_s: per-kernel profiler inflation subtracted from every kernel time.
        notes: caveats worth reporting.
    """

    total_s: float
    kernel_sum_s: float
    node_times: Mapping[str, float]
    kernels: tuple[KernelTime, ...]
    runs: int
    profiled_wall_s: float = 0.0
    inflation_s: float = 0.0
    notes: tuple[str, ...] = field(default=())

    @property
    def unmapped_s(self) -> float:
        """Kernel time that maps to no original node (layout reorders, copies, unknown fusions)."""
        return sum(k.time_s for k in self.kernels if not k.nodes)

    def to_total(self, overhead_s: float = 0.0) -> float:
        """Factor from profiled kernel seconds to seconds of the unprofiled run.

        The kernels and the unprofiled total are measured in different sessions, and on a shared
        machine a session can run in a slow phase (a disturbed profile sums to more than the
        total; a disturbed total exceeds the kernel sum by what is really a phase difference).
        Either way the profile's *shares* hold, so the kernels are scaled to fill the total less
        the measured per-run session overhead, the one part of a run no kernel records. Before,
        a total measured in a slow phase put the whole difference into the fixed time (MiniLM:
        10 ms of 97 "unattributed", the Amdahl bound 3.1x where other runs read 4.2x).
        """
        if self.kernel_sum_s <= 0:
            return 1.0
        return max(self.total_s - max(overhead_s, 0.0), 0.0) / self.kernel_sum_s

    def nodes_time(self, names: Iterable[str]) -> float:
        """Sum of the profiled times of ``names`` (unmapped names count 0)."""
        return sum(self.node_times.get(name, 0.0) for name in set(names))

    def base_time(self, candidate_node_names: Iterable[str]) -> float:
        """``total − Σ time of the candidate nodes``: the part pruning cannot change (>= 0)."""
        return max(self.total_s - self.nodes_time(candidate_node_names), 0.0)

    def to_json(self) -> dict:
        return {
            "total_s": self.total_s,
            "kernel_sum_s": self.kernel_sum_s,
            "node_times": dict(self.node_times),
            "kernels": [
                {
                    "name": k.name,
                    "op": k.op,
                    "provider": k.provider,
                    "time_s": k.time_s,
                    "nodes": list(k.nodes),
                }
                for k in self.kernels
            ],
            "runs": self.runs,
            "profiled_wall_s": self.profiled_wall_s,
            "inflation_s": self.inflation_s,
            "notes": list(self.notes),
        }

    @staticmethod
    def from_json(data: Mapping) -> ModelProfile:
        return ModelProfile(
            total_s=float(data["total_s"]),
            kernel_sum_s=float(data["kernel_sum_s"]),
            node_times={str(k): float(v) for k, v in data["node_times"].items()},
            kernels=tuple(
                KernelTime(k["name"], k["op"], k["provider"], float(k["time_s"]), tuple(k["nodes"]))
                for k in data["kernels"]
            ),
            runs=int(data["runs"]),
            profiled_wall_s=float(data.get("profiled_wall_s", 0.0)),
            inflation_s=float(data.get("inflation_s", 0.0)),
            notes=tuple(data.get("notes", ())),
        )


def profiling_session_options(runtime: RuntimeConfig, folder: str) -> ort.SessionOptions:
    """Session options as :func:`onnxprune.common.runtime.make_session` sets them, plus profiling.

    The profile JSON and the optimized graph go into ``folder`` (a temporary directory), never
    the current directory; the optimized graph's weights go to an external file there so models
    of any size can be written.
    """
    options = session_options(runtime)
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(folder, "profile")
    return options


def _open_session(
    payload: bytes, runtime: RuntimeConfig, folder: str
) -> tuple[ort.InferenceSession, onnx.ModelProto | None]:
    """A profiling session, and the optimized graph ORT built (None when it cannot be written)."""
    optimized_path = os.path.join(folder, "optimized.onnx")
    options = profiling_session_options(runtime, folder)
    options.optimized_model_filepath = optimized_path
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", "optimized.data"
    )
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
    )
    try:
        session = ort.InferenceSession(payload, sess_options=options, providers=runtime.providers())
    except Exception as exc:  # noqa: BLE001 - e.g. compiled EP nodes cannot be serialized
        logger.debug("cannot write the optimized graph (%s); mapping kernels by name only", exc)
        options = profiling_session_options(runtime, folder)
        session = ort.InferenceSession(payload, sess_options=options, providers=runtime.providers())
        return session, None
    try:
        optimized = onnx.load(optimized_path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - a missing/odd file only weakens the mapping
        logger.debug("cannot read the optimized graph (%s); mapping kernels by name only", exc)
        optimized = None
    return session, optimized


def profile_model(
    model: onnx.ModelProto,
    bound: BoundInputs,
    runtime: RuntimeConfig,
    *,
    runs: int = 10,
    warmup: int = 3,
    feed: Mapping[str, np.ndarray] | None = None,
    inflation_s: float | None = None,
    total: Timing | None = None,
    sessions: int = 3,
) -> ModelProfile:
    """Profile ``model`` on the EP at the bound input shapes and map kernels to its nodes.

    Args:
        model: the model whose node names the result refers to (names must be unique and
            non-empty, see :func:`onnxprune.graph.candidates.ensure_node_names`; otherwise a
            named copy is profiled, whose names are the ones ``ensure_node_names`` gives).
        bound: the deployment input shapes (synthetic inputs are generated at these shapes).
        runtime: EP, provider options and threads, as the user deploys.
        runs: profiled runs (after ``warmup`` untimed ones, which are left out of the profile).
        warmup: untimed runs first.
        feed: inputs to use instead of synthetic ones.
        inflation_s: the profiler's per-kernel inflation; measured with
            :func:`profiler_inflation` when None.
        total: the model's unprofiled timing when already measured; measured when None (the
            median over ``sessions`` fresh sessions).
        sessions: fresh profiling sessions; each kernel's time is the median over all of their
            runs, because one session's timings can sit 10-30% off the next one's (issue 14's
            measurements: a bound computed from one session moved by up to 20% between runs).

    Returns:
        Per-node median times, the median wall time of a run and the kernel sum.
    """
    names = [n.name for n in model.graph.node]
    if any(not n for n in names) or len(set(names)) != len(names):
        model = ensure_node_names(onnx.ModelProto.FromString(model.SerializeToString()))
    feed = dict(feed) if feed is not None else synthetic_feed(bound.as_tuples())
    payload = model.SerializeToString()
    if inflation_s is None:
        inflation_s = profiler_inflation(runtime)
    sessions = max(1, sessions)
    if total is None:
        total = median_over_sessions(payload, feed, runtime, sessions)
    raw_kernels: dict[str, list[float]] = defaultdict(list)
    walls: list[float] = []
    info: dict[str, tuple[str, str]] = {}
    optimized = None
    for index in range(sessions):
        kernels_s, walls_s, info_s, optimized_s = _profile_raw(payload, feed, runtime, runs,
                                                               warmup)
        for name, times in kernels_s.items():
            raw_kernels[name].extend(times)
        walls.extend(walls_s)
        info.update(info_s)
        if index == 0:
            optimized = optimized_s
    covers = map_kernels(model, optimized, info)
    kernels: list[KernelTime] = []
    node_times: dict[str, float] = defaultdict(float)
    weights = _weight_sizes(model)
    for name, times in raw_kernels.items():
        op, provider = info[name]
        corrected = [max(t - inflation_s, 0.0) for t in times]
        time_s = float(statistics.median(corrected))
        nodes = covers.get(name, ())
        kernels.append(KernelTime(name, op, provider, time_s, nodes))
        for node, share in _split(nodes, weights).items():
            node_times[node] += time_s * share
    notes: list[str] = []
    if any(k.provider == "CUDAExecutionProvider" for k in kernels):
        notes.append(
            "CUDA: profiler node times are host-side launch times; per-node times and "
            "the base time are indicative only"
        )
        logger.warning(notes[-1])
    unmapped = sorted({k.name for k in kernels if not k.nodes and k.op not in _LAYOUT_ONLY_OPS})
    if unmapped:
        logger.debug("profiler kernels not mapped to original nodes: %s", ", ".join(unmapped))
    return ModelProfile(
        total_s=total.median_s,
        kernel_sum_s=float(sum(k.time_s for k in kernels)),
        node_times=dict(node_times),
        kernels=tuple(kernels),
        runs=len(walls),
        profiled_wall_s=float(statistics.median(walls)),
        inflation_s=inflation_s,
        notes=tuple(notes),
    )


def median_over_sessions(
    payload: bytes, feed: Mapping[str, np.ndarray], runtime: RuntimeConfig, sessions: int = 3,
    seconds: float = 1.0,
) -> Timing:
    """The model's time per run as the median of the medians of ``sessions`` fresh sessions.

    The MAD of the result is the MAD of the session medians, so it says how much a fresh
    session moves the number, which is what a user re-measuring in a new process meets.
    """
    medians = [
        time_model(payload, feed, runtime, warmup=1, min_repeats=3,
                   max_seconds=seconds / max(sessions, 1)).median_s
        for _ in range(max(sessions, 1))
    ]
    median = float(np.median(medians))
    return Timing(median, float(np.median(np.abs(np.asarray(medians) - median))), len(medians))


def _profile_raw(
    payload: bytes,
    feed: Mapping[str, np.ndarray],
    runtime: RuntimeConfig,
    runs: int,
    warmup: int,
) -> tuple[dict[str, list[float]], list[float], dict[str, tuple[str, str]], onnx.ModelProto | None]:
    """Uncorrected per-kernel times per run, wall times, kernel (op, provider), optimized graph."""
    runs = max(1, runs)
    with tempfile.TemporaryDirectory(prefix="onnxprune-profile-") as folder:
        session, optimized = _open_session(payload, runtime, folder)
        runner = _Runner(session, feed, runtime)
        for _ in range(max(warmup, 0)):
            runner()
        walls = [runner.timed() for _ in range(runs)]
        profile_path = session.end_profiling()
        events = json.loads(Path(profile_path).read_text())
    per_kernel, info = _kernel_times(events, skip_runs=max(warmup, 0))
    return per_kernel, walls, info, optimized


_CHAIN = 20


def profiler_inflation(runtime: RuntimeConfig) -> float:
    """Seconds the profiler adds to each kernel event, measured on a chain of trivial kernels.

    A chain of ``Relu`` nodes on one float is timed with and without the profiler; the
    inflation is the median profiled kernel time minus the real per-node time.
    """
    from onnxprune.graph.load import stamp_ir_version

    nodes = [
        helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"relu{i}") for i in range(_CHAIN)
    ]
    graph = helper.make_graph(
        nodes,
        "inflation",
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info(f"t{_CHAIN}", TensorProto.FLOAT, [1])],
    )
    payload = stamp_ir_version(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    ).SerializeToString()
    feed = {"t0": np.zeros(1, dtype=np.float32)}
    real = time_model(payload, feed, runtime, min_repeats=20, max_seconds=0.2).median_s
    overhead = run_overhead(runtime, max_seconds=0.2).median_s
    per_node = max(real - overhead, 0.0) / _CHAIN
    raw, _, _, _ = _profile_raw(payload, feed, runtime, runs=5, warmup=2)
    profiled = statistics.median(t for times in raw.values() for t in times)
    inflation = max(profiled - per_node, 0.0)
    logger.debug("profiler inflation %.2f us per kernel", inflation * 1e6)
    return inflation


def _kernel_times(
    events: list[dict], skip_runs: int
) -> tuple[dict[str, list[float]], dict[str, tuple[str, str]]]:
    """Per-kernel durations (s) per timed run, and each kernel's (op, provider)."""
    run_spans = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    run_spans = run_spans[skip_runs:]
    starts = [s for s, _ in run_spans]
    per_run: list[dict[str, float]] = [defaultdict(float) for _ in run_spans]
    info: dict[str, tuple[str, str]] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith(_KERNEL_SUFFIX):
            continue
        ts = event.get("ts", 0)
        index = int(np.searchsorted(starts, ts, side="right")) - 1
        if index < 0 or ts > run_spans[index][1]:
            continue  # a warm-up run or outside any run
        name = event["name"][: -len(_KERNEL_SUFFIX)]
        args = event.get("args", {})
        info.setdefault(name, (str(args.get("op_name", "")), str(args.get("provider", ""))))
        per_run[index][name] += float(event.get("dur", 0)) * 1e-6
    per_kernel: dict[str, list[float]] = {name: [] for name in info}
    for run in per_run:
        for name in info:
            per_kernel[name].append(run.get(name, 0.0))
    return per_kernel, info


def name_variants(kernel: str) -> list[str]:
    """Candidate original names for a kernel name (rules 1-3 of the module docstring)."""
    variants = [kernel]
    current = kernel
    while True:
        stripped = current
        if stripped.startswith(_FUSED_PREFIX):
            stripped = stripped[len(_FUSED_PREFIX) :]
        stripped = _FUSION_SUFFIX.sub("", stripped)
        if stripped == current or not stripped:
            break
        variants.append(stripped)
        current = stripped
    return variants


def map_kernels(
    model: onnx.ModelProto,
    optimized: onnx.ModelProto | None,
    kernels: Mapping[str, tuple[str, str]],
) -> dict[str, tuple[str, ...]]:
    """Original nodes covered by each kernel (see the module docstring for the rules).

    Args:
        model: the original model (unique node names).
        optimized: the optimized graph ORT ran, or None (then only rules 1-3 apply).
        kernels: kernel name -> (op type, provider), e.g. from the profile.

    Returns:
        kernel name -> covered original node names (each node covered by at most one kernel).
    """
    graph = model.graph
    all_names = _all_node_names(graph)
    producer = {out: node for node in graph.node for out in node.output if out}
    constants = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    opt_nodes = {n.name: n for n in optimized.graph.node} if optimized is not None else {}
    live: set[str] = set()
    if optimized is not None:
        live |= {t.name for t in optimized.graph.initializer}
        live |= {i.name for i in optimized.graph.input}
        for node in optimized.graph.node:
            live.update(x for x in node.input if x)
            live.update(x for x in node.output if x)

    anchors: dict[str, str] = {}
    claimed: dict[str, str] = {}  # original tensor -> kernel that produces it
    for kernel in kernels:
        for variant in name_variants(kernel):
            if variant in all_names:
                anchors[kernel] = variant
                break
        if kernel.endswith(_NCHWC_SUFFIX):
            tensor = kernel[: -len(_NCHWC_SUFFIX)]
            if tensor in producer:
                claimed.setdefault(tensor, kernel)
    for kernel, (op, _) in kernels.items():
        node = opt_nodes.get(kernel)
        if node is None or op in _LAYOUT_ONLY_OPS or node.op_type in _LAYOUT_ONLY_OPS:
            continue
        for out in node.output:
            if out in producer:
                claimed.setdefault(out, kernel)

    owner: dict[str, str] = {}
    covers: dict[str, list[str]] = {k: [] for k in kernels}
    # Kernels with a name anchor first: their claim on their own node is the surest.
    order = sorted(kernels, key=lambda k: k not in anchors)
    for kernel in order:
        if kernel in anchors and anchors[kernel] not in owner:
            owner[anchors[kernel]] = kernel
            covers[kernel].append(anchors[kernel])
        node = opt_nodes.get(kernel)
        stop = set(node.input) if node is not None else set()
        stack = [t for t, k in claimed.items() if k == kernel]
        seen: set[str] = set()
        while stack:
            tensor = stack.pop()
            if tensor in seen or tensor in constants:
                continue
            seen.add(tensor)
            original = producer.get(tensor)
            if original is None or original.name in owner and owner[original.name] != kernel:
                continue
            if original.name not in owner:
                owner[original.name] = kernel
                covers[kernel].append(original.name)
            for inp in original.input:
                if not inp or inp in stop or inp in constants:
                    continue
                if inp in claimed and claimed[inp] != kernel:
                    continue
                if inp in live:
                    continue
                stack.append(inp)
    return {k: tuple(v) for k, v in covers.items()}


def _all_node_names(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        names.add(node.name)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                names |= _all_node_names(attr.g)
            for sub in attr.graphs:
                names |= _all_node_names(sub)
    return names


def _weight_sizes(model: onnx.ModelProto) -> dict[str, tuple[str, float]]:
    """node name -> (op type, size of its constant second input or 0) for the split rule."""
    sizes = {t.name: float(np.prod(t.dims)) for t in model.graph.initializer}
    result: dict[str, tuple[str, float]] = {}
    for node in model.graph.node:
        weight = sizes.get(node.input[1], 0.0) if len(node.input) > 1 else 0.0
        result[node.name] = (node.op_type, weight)
    return result


def _split(nodes: tuple[str, ...], weights: Mapping[str, tuple[str, float]]) -> dict[str, float]:
    """Shares of a kernel's time among the original nodes it covers."""
    if not nodes:
        return {}
    if len(nodes) == 1:
        return {nodes[0]: 1.0}
    heavy = [n for n in nodes if weights.get(n, ("", 0.0))[0] in HEAVY_OPS]
    if not heavy:
        return {n: 1.0 / len(nodes) for n in nodes}
    sizes = [weights[n][1] for n in heavy]
    known = [s for s in sizes if s > 0]
    fill = sum(known) / len(known) if known else 1.0
    sizes = [s if s > 0 else fill for s in sizes]
    total = sum(sizes)
    return {n: s / total for n, s in zip(heavy, sizes, strict=True)}
