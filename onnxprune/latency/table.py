"""The latency table: what each prunable node costs under each layout option, and what is fixed.

Built once per (model, deployment shapes, EP, threads) by :func:`build_latency_table`:

1. The whole model is profiled (:func:`onnxprune.latency.profile.profile_model`): its measured
   dense time ``T_dense`` (no profiler) and the profiled time of every candidate node.
   ``base = T_dense − Σ profiled candidate time`` is the part pruning cannot change, where the
   profiled times are the kernels' shares of ``T_dense`` less the run overhead
   (:meth:`~onnxprune.latency.profile.ModelProfile.to_total`: profile and total come from
   different sessions, which can run in different phases of a shared machine).
2. Every candidate × option is timed in isolation: the node alone at its real input shape,
   materialized with that option (``layouts.isolate``), on the EP with the user's threads. A
   candidate whose weight is shared by several nodes runs each of them, so its time is the sum
   over its sites. Timings are deduplicated by signature (op, attributes, weight and site shapes,
   option), so the six identical blocks of a transformer are timed once, and cached on disk.
   The fixed per-run cost of a session (:func:`onnxprune.latency.measure.run_overhead`) is
   subtracted from every isolated timing: the whole model pays it once, in its base time.
3. Isolated and in-graph times differ (fused bias/activation epilogues, warm caches, thread pool
   wake-ups). The gap is reported, and corrected with one global factor
   ``scale = Σ profiled candidate time / Σ isolated dense time`` applied to every option's time,
   so the all-dense prediction reproduces the measured dense time exactly and relative option
   costs keep what isolation measured. A global factor is used rather than one per candidate
   because per-node profiler times of small nodes are noisy (1 µs resolution) while their sum is
   not.

   ``predicted_total(assignment) = base + scale · Σ_c time_c(option_c)``
   ``amdahl_bound = T_dense / (base + scale · Σ_c min_option time_c)``

The cache is one JSON file per timing in ``cache_dir`` (default
``platformdirs.user_cache_dir("onnxprune")/latency``), named by a fingerprint: a hash of the
machine (CPU model, core count; GPU model for CUDA/TensorRT), the EP and its options, the thread
count, the onnxruntime version, the timing method, the source of the code that builds isolated
models, and the signature with all shapes. Any change gives a new name, so stale numbers are never
reused; a corrupt file is ignored (and rewritten) with a log message.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import platform
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.common.runtime import RuntimeConfig, synthetic_feed
from onnxprune.graph.candidates import Candidate, GraphAnalysis
from onnxprune.graph.shapes import graph_inputs
from onnxprune.latency.measure import RatioTiming, Timing, run_overhead, time_model, time_ratio
from onnxprune.latency.profile import (
    ModelProfile,
    median_over_sessions,
    profile_model,
    profiler_inflation,
)
from onnxprune.layouts.base import DENSE, LayoutOption
from onnxprune.layouts.registry import option_label

logger = logging.getLogger("onnxprune")

# Bump when the way timings are taken changes, so old cache entries are not reused.
TIMING_SCHEMA = 3  # 2: no thread spinning; 3: options timed against their dense reference
# Net isolated times never drop below this fraction of the raw timing (noise guard).
_NET_FLOOR = 0.02

Progress = Callable[[int, int, str], None]
IsolatedBuilder = Callable[[Candidate, LayoutOption, int], onnx.ModelProto]
Timer = Callable[[onnx.ModelProto, Mapping[str, np.ndarray], RuntimeConfig], Timing]
PairTimer = Callable[[onnx.ModelProto, onnx.ModelProto, Mapping[str, np.ndarray], RuntimeConfig],
                     RatioTiming]


@dataclass(frozen=True)
class CandidateLatency:
    """Isolated times of one candidate (summed over its sites, per-run overhead removed).

    Attributes:
        name: the candidate's name.
        nodes: its node names.
        profiled_s: the profiler's time of its nodes inside the whole model (None: the
            profiler did not map every node of it).
        options: (option, seconds) for dense and every timed option, uncorrected.
    """

    name: str
    nodes: tuple[str, ...]
    profiled_s: float | None
    options: tuple[tuple[LayoutOption, float], ...]
    rel_se: tuple[float, ...] = ()

    def spread(self, option: LayoutOption) -> float:
        """Relative standard error of ``option``'s time against the dense time (0: unknown)."""
        for (known, _), se in zip(self.options, self.rel_se, strict=False):
            if known == option:
                return se
        return 0.0

    @property
    def dense_s(self) -> float:
        return self.raw_time(DENSE)

    def raw_time(self, option: LayoutOption) -> float:
        """Isolated seconds of ``option`` (no correction)."""
        for known, seconds in self.options:
            if known == option:
                return seconds
        raise KeyError(
            f"{self.name}: option {option_label(option)!r} was not timed; timed: "
            + ", ".join(option_label(o) for o, _ in self.options)
        )

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "nodes": list(self.nodes),
            "profiled_s": self.profiled_s,
            "options": [{"option": o.to_json(), "time_s": t} for o, t in self.options],
            "rel_se": list(self.rel_se),
        }

    @staticmethod
    def from_json(data: Mapping) -> CandidateLatency:
        profiled = data.get("profiled_s")
        return CandidateLatency(
            name=data["name"],
            nodes=tuple(data["nodes"]),
            profiled_s=None if profiled is None else float(profiled),
            options=tuple(
                (LayoutOption.from_json(o["option"]), float(o["time_s"])) for o in data["options"]
            ),
            rel_se=tuple(float(x) for x in data.get("rel_se", ())),
        )


@dataclass(frozen=True)
class LatencyTable:
    """Per-candidate option times, the fixed base time, and the correction that ties them.

    Attributes:
        candidates: one entry per candidate.
        base_s: fixed time per run (everything but the candidates' nodes).
        dense_total_s: measured time per run of the whole dense model.
        scale: correction factor applied to every isolated option time (see module docstring).
        overhead_s: per-run session overhead subtracted from every isolated timing.
        environment: the machine/EP/threads/ORT the numbers hold for (human-readable).
        fingerprint: hash of ``environment``.
        profile: the whole-model profile (per-node times for the report).
        timings_run: isolated timings measured while building.
        timings_cached: isolated timings taken from the cache.
        dropped: (candidate, option, reason) for options that could not be built or timed.
    """

    candidates: tuple[CandidateLatency, ...]
    base_s: float
    dense_total_s: float
    scale: float
    overhead_s: float
    environment: Mapping[str, object] = field(default_factory=dict)
    fingerprint: str = ""
    profile: ModelProfile | None = None
    timings_run: int = 0
    timings_cached: int = 0
    dropped: tuple[tuple[str, LayoutOption, str], ...] = ()
    total_spread: float = 0.0

    # ----------------------------------------------------------------- lookups
    def candidate(self, name: str) -> CandidateLatency:
        for entry in self.candidates:
            if entry.name == name:
                return entry
        raise KeyError(f"no latency entry for candidate {name!r}")

    def option_time(self, name: str, option: LayoutOption) -> float:
        """Predicted in-graph seconds of candidate ``name`` under ``option`` (corrected)."""
        return self.scale * self.candidate(name).raw_time(option)

    def options(self, name: str) -> list[LayoutOption]:
        """Options timed for candidate ``name`` (dense first)."""
        return [o for o, _ in self.candidate(name).options]

    # ----------------------------------------------------------------- predictions
    @property
    def isolated_dense_s(self) -> float:
        """Σ isolated dense time of all candidates (uncorrected)."""
        return sum(c.dense_s for c in self.candidates)

    @property
    def prunable_s(self) -> float:
        """Time of the candidates inside the dense model: ``dense_total − base``."""
        return self.dense_total_s - self.base_s

    @property
    def gap_s(self) -> float:
        """``dense_total − (base + Σ isolated dense)``: what isolation misses (>0) or adds."""
        return self.dense_total_s - (self.base_s + self.isolated_dense_s)

    def predicted_total(self, assignment: Mapping[str, LayoutOption]) -> float:
        """Predicted seconds per run with each candidate in its assigned option (default dense).

        Raises:
            KeyError: an assigned candidate or option is not in the table.
        """
        names = {c.name for c in self.candidates}
        unknown = [n for n in assignment if n not in names]
        if unknown:
            raise KeyError(f"candidates not in the latency table: {unknown}")
        prunable = sum(c.raw_time(assignment.get(c.name, DENSE)) for c in self.candidates)
        return self.base_s + self.scale * prunable

    def predicted_speedup(self, assignment: Mapping[str, LayoutOption]) -> float:
        total = self.predicted_total(assignment)
        return self.dense_total_s / total if total > 0 else math.inf

    def fastest(self, allowed_layouts: Iterable[str] | None = None) -> dict[str, LayoutOption]:
        """The fastest timed option per candidate among ``allowed_layouts`` (dense always)."""
        allowed = None if allowed_layouts is None else {*allowed_layouts, DENSE.layout}
        best: dict[str, LayoutOption] = {}
        for entry in self.candidates:
            choices = [(t, o) for o, t in entry.options if allowed is None or o.layout in allowed]
            best[entry.name] = min(choices, key=lambda pair: pair[0])[1]
        return best

    def amdahl_bound(self, allowed_layouts: Iterable[str] | None = None) -> float:
        """Best reachable speedup: ``dense_total / (base + Σ fastest option)``."""
        return self.predicted_speedup(self.fastest(allowed_layouts))

    def bound_spread(self, allowed_layouts: Iterable[str] | None = None) -> float:
        """Relative uncertainty (≈ 2 standard errors) of :meth:`amdahl_bound`.

        From the dense time's spread over fresh sessions and each fastest option's ratio
        standard error (independent, added in quadrature).
        """
        return self.bound_spread_of(self.fastest(allowed_layouts))

    def bound_spread_of(self, fastest: Mapping[str, LayoutOption],
                        denominator: float | None = None) -> float:
        """:meth:`bound_spread` for a given fastest option per candidate (and predicted total)."""
        denominator = self.predicted_total(fastest) if denominator is None else denominator
        if denominator <= 0:
            return 0.0
        option_var = sum(
            (self.scale * entry.raw_time(fastest[entry.name]) * entry.spread(fastest[entry.name]))
            ** 2 for entry in self.candidates
        )
        rel = math.sqrt(self.total_spread ** 2 + option_var / denominator ** 2)
        return 2.0 * rel

    # ----------------------------------------------------------------- JSON
    def to_json(self) -> dict:
        return {
            "schema": TIMING_SCHEMA,
            "base_s": self.base_s,
            "dense_total_s": self.dense_total_s,
            "scale": self.scale,
            "overhead_s": self.overhead_s,
            "gap_s": self.gap_s,
            "environment": dict(self.environment),
            "fingerprint": self.fingerprint,
            "timings_run": self.timings_run,
            "timings_cached": self.timings_cached,
            "total_spread": self.total_spread,
            "candidates": [c.to_json() for c in self.candidates],
            "dropped": [
                {"candidate": c, "option": o.to_json(), "reason": r} for c, o, r in self.dropped
            ],
            "profile": self.profile.to_json() if self.profile is not None else None,
        }

    @staticmethod
    def from_json(data: Mapping) -> LatencyTable:
        profile = data.get("profile")
        return LatencyTable(
            candidates=tuple(CandidateLatency.from_json(c) for c in data["candidates"]),
            base_s=float(data["base_s"]),
            dense_total_s=float(data["dense_total_s"]),
            scale=float(data["scale"]),
            overhead_s=float(data["overhead_s"]),
            environment=dict(data.get("environment", {})),
            fingerprint=str(data.get("fingerprint", "")),
            profile=ModelProfile.from_json(profile) if profile else None,
            timings_run=int(data.get("timings_run", 0)),
            timings_cached=int(data.get("timings_cached", 0)),
            total_spread=float(data.get("total_spread", 0.0)),
            dropped=tuple(
                (d["candidate"], LayoutOption.from_json(d["option"]), d["reason"])
                for d in data.get("dropped", ())
            ),
        )


# --------------------------------------------------------------------------- fingerprint & cache
def default_cache_dir() -> Path:
    """``platformdirs.user_cache_dir("onnxprune")/latency``."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("onnxprune")) / "latency"


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def _gpu_models() -> tuple[str, ...]:
    models = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            for line in info.read_text().splitlines():
                if line.startswith("Model:"):
                    models.append(line.split(":", 1)[1].strip())
        except OSError:
            continue
    return tuple(models)


def runtime_environment(runtime: RuntimeConfig) -> dict[str, object]:
    """What a timing depends on besides the node itself (part of every cache key)."""
    env: dict[str, object] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
        "provider": runtime.provider,
        "provider_options": dict(sorted((runtime.provider_options or {}).items())),
        "threads": runtime.threads,
        "onnxruntime": ort.__version__,
        "timing_schema": TIMING_SCHEMA,
    }
    if runtime.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        env["gpu"] = list(_gpu_models())
    return env


def fingerprint(*parts: object) -> str:
    """Stable hex digest of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=_jsonable, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _jsonable(value: object) -> object:
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


class TimingCache:
    """One JSON file per entry in ``folder``, named by the entry's fingerprint.

    Every file stores its full key, which is compared on read; files that cannot be read or do not
    match are ignored with a log message. Writes are atomic (temporary file, then rename).
    """

    def __init__(self, folder: Path | None, read: bool = True) -> None:
        self.folder = folder
        self.read = read

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{key}.json"

    def get(self, key: str, meta: Mapping) -> dict | None:
        if self.folder is None or not self.read:
            return None
        path = self._path(key)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("meta") != json.loads(json.dumps(meta, default=_jsonable)):
                logger.info("latency cache entry %s does not match its key; re-measuring", path)
                return None
            return data["value"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("ignoring corrupt latency cache file %s (%s); re-measuring", path, exc)
            return None

    def put(self, key: str, meta: Mapping, value: Mapping) -> None:
        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            payload = json.dumps({"meta": meta, "value": value}, default=_jsonable, indent=1)
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.folder)
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(payload)
                os.replace(tmp, self._path(key))
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("cannot write latency cache in %s (%s); continuing", self.folder, exc)


# --------------------------------------------------------------------------- signatures
def site_signature(candidate: Candidate, site_index: int, option: LayoutOption) -> dict:
    """What an isolated timing depends on: op, attributes, shapes and the option."""
    site = candidate.sites[site_index]
    return {
        "op": candidate.op,
        "attrs": {k: candidate.attrs[k] for k in sorted(candidate.attrs)},
        "weight_shape": list(candidate.weight.shape),
        "bias": candidate.bias is not None,
        "input_shape": list(site.input_shape),
        "output_shape": list(site.output_shape),
        "option": option.to_json(),
        "structure": (candidate.structure.signature
                      if option.layout == "structure" and candidate.structure else None),
    }


def _default_isolated(candidate: Candidate, option: LayoutOption, site_index: int):
    from onnxprune.layouts import isolate

    if option == DENSE:
        return isolate.dense_isolated_model(candidate, site_index)
    if option.layout == "structure":
        return _structure_at(candidate, option.param("keep"))
    return isolate.isolated_model(candidate, option, site_index=site_index)


def _structure_at(candidate: Candidate, keep: int) -> onnx.ModelProto:
    """The candidate's structure subgraph at ``keep`` channels (which ones does not matter)."""
    from onnxprune.structures.shrink import StructureCut, apply_cuts

    context = candidate.structure
    assert context is not None
    model = onnx.ModelProto()
    model.CopyFrom(context.isolated)
    cut = StructureCut(context.structure, np.arange(keep))
    return apply_cuts(model, [cut], {candidate.name: candidate,
                                     **{p.name: p for p in context.producers}})


def _reference(builder: IsolatedBuilder, candidate: Candidate, option: LayoutOption,
               index: int) -> onnx.ModelProto:
    """What an option is timed against: the site's dense node, or its structure's dense subgraph.

    A structure option saves time in every node of its structure; its table time is the
    consumer's dense time minus that saving, so the table stays one row per candidate.
    """
    if option.layout == "structure" and candidate.structure is not None:
        return candidate.structure.isolated
    return builder(candidate, DENSE, index)


@functools.lru_cache(maxsize=64)
def _source_digest(paths: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        try:
            digest.update(Path(path).read_bytes())
        except OSError:
            digest.update(path.encode())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=256)
def _code_version(builder: IsolatedBuilder, layout: str) -> str:
    """Digest of the source that builds isolated models for ``layout`` (cache invalidation)."""
    modules = []
    if builder is _default_isolated:
        try:
            from onnxprune.layouts import isolate
            from onnxprune.layouts.registry import get_layout

            modules.append(isolate)
            impl = get_layout(layout)
            modules.append(inspect.getmodule(impl if isinstance(impl, type) else type(impl)))
        except Exception as exc:  # noqa: BLE001 - an unknown layout fails later, with a message
            logger.debug("no layout source for %s: %s", layout, exc)
    else:
        modules.append(inspect.getmodule(builder))
    files = tuple(sorted({getattr(m, "__file__", None) or repr(m) for m in modules if m}))
    return _source_digest(files)


def _timing_key(env: Mapping, builder: IsolatedBuilder, candidate: Candidate, index: int,
                option: LayoutOption) -> tuple[str, dict]:
    meta = {
        "env": env,
        "code": _code_version(builder, option.layout),
        "signature": site_signature(candidate, index, option),
    }
    return fingerprint(meta), meta


def _time_against(
    reference: onnx.ModelProto, model: onnx.ModelProto, feed: Mapping[str, np.ndarray],
    runtime: RuntimeConfig, timer: Timer | None, pair_timer: PairTimer | None,
    reference_s: float | None,
) -> RatioTiming:
    """Time an option against its site's dense model (interleaved unless a timer is injected)."""
    if pair_timer is not None:
        return pair_timer(reference, model, feed, runtime)
    if timer is not None:  # an injected single-model timer (tests): ratio to the dense timing
        timing = timer(model, feed, runtime)
        ref = reference_s if reference_s else timing.median_s
        return RatioTiming(timing.median_s / ref, timing.rel_se, ref, timing.median_s,
                           timing.repeats)
    return time_ratio(reference, model, feed, runtime)


def isolated_feed(model: onnx.ModelProto, site_input_shape: Sequence[int]) -> dict:
    """Synthetic inputs for an isolated model: declared shapes, else the site's activation shape."""
    specs = []
    inputs = graph_inputs(model)
    for value in inputs:
        tensor = value.type.tensor_type
        dims = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in tensor.shape.dim
        ]
        if None in dims or not tensor.HasField("shape"):
            if len(inputs) != 1:
                raise ValueError(
                    f"isolated model input {value.name!r} has a dynamic shape and the model has "
                    f"{len(inputs)} inputs: cannot tell which is the activation"
                )
            dims = list(site_input_shape)
        specs.append((value.name, tensor.elem_type, tuple(dims)))
    return synthetic_feed(specs)


# --------------------------------------------------------------------------- building
def build_latency_table(
    model: onnx.ModelProto,
    analysis: GraphAnalysis,
    options: Mapping[str, Sequence[LayoutOption]],
    runtime: RuntimeConfig,
    *,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    progress: Progress | None = None,
    isolated: IsolatedBuilder | None = None,
    timer: Timer | None = None,
    pair_timer: PairTimer | None = None,
    profile: ModelProfile | None = None,
    refresh: bool = False,
) -> LatencyTable:
    """Measure the latency table of ``model`` on the EP (see the module docstring).

    Args:
        model: the model (unique node names, as the analysis saw it).
        analysis: its candidates at the deployment shapes.
        options: per candidate name, the options to time (dense is always timed too).
        runtime: EP, provider options and threads.
        cache_dir: cache folder (None: :func:`default_cache_dir`).
        use_cache: False to neither read nor write the cache.
        progress: called as ``progress(done, total, description)`` after every step.
        isolated: builds the isolated model of (candidate, option, site index); default
            ``layouts.isolate`` (dense: ``dense_isolated_model``).
        timer: times an isolated model; default :func:`~onnxprune.latency.measure.time_model`.
            When given (and ``pair_timer`` is not), options are timed alone with it and related
            to their site's dense timing.
        pair_timer: times an option against its site's dense model; default
            :func:`~onnxprune.latency.measure.time_ratio`.
        profile: a whole-model profile already taken (skips profiling).
        refresh: re-measure everything (the cache is written, not read).

    Returns:
        The table.
    """
    builder = isolated or _default_isolated
    injected_timer = timer
    timer = timer or time_model
    cache = TimingCache((cache_dir or default_cache_dir()) if use_cache else None,
                        read=not refresh)
    env = runtime_environment(runtime)
    env_key = fingerprint(env)

    # Unique isolated timings: signature key -> (candidate, site, option) that represents it.
    plan: dict[str, tuple[Candidate, int, LayoutOption, dict]] = {}
    dense_key: dict[str, str] = {}  # timing key -> the key of the same site's dense timing
    owner_key: dict[str, str] = {}  # structure option key -> its consumer site's dense key
    per_candidate: dict[str, list[tuple[LayoutOption, list[str]]]] = {}
    for candidate in analysis.candidates:
        wanted = [DENSE, *[o for o in options.get(candidate.name, ()) if o != DENSE]]
        wanted = list(dict.fromkeys(wanted))
        rows = []
        for option in wanted:
            keys = []
            for index in range(len(candidate.sites)):
                key, meta = _timing_key(env, builder, candidate, index, option)
                plan.setdefault(key, (candidate, index, option, meta))
                site_key = _timing_key(env, builder, candidate, index, DENSE)[0]
                if option.layout == "structure" and candidate.structure is not None:
                    # Timed against the structure's dense subgraph; saves from the site's time.
                    dense_key[key] = "structure:" + candidate.structure.signature
                    owner_key[key] = site_key
                else:
                    dense_key[key] = site_key
                keys.append(key)
            rows.append((option, keys))
        per_candidate[candidate.name] = rows

    total_steps = len(plan) + 2
    done = 0

    def step(description: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total_steps, description)

    # 1. Whole model: profile (cached by the model's content, the shapes and the environment).
    total_spread = 0.0
    if profile is None:
        profile = _cached_profile(model, analysis, runtime, cache, env)
        profile, total_spread = _consistent_profile(profile, model, analysis, runtime, cache, env)
    step("profiled the whole model")
    # 2. Per-run overhead.
    overhead_meta = {"env": env, "what": "run_overhead"}
    overhead_key = fingerprint(overhead_meta)
    cached = cache.get(overhead_key, overhead_meta)
    if cached is not None:
        overhead = Timing.from_json(cached)
    else:
        overhead = run_overhead(runtime)
        cache.put(overhead_key, overhead_meta, overhead.to_json())
    step("measured the per-run overhead")

    # 3. Isolated timings. Dense first: each site's dense model is the reference every option of
    # that site is then timed against, interleaved (time_ratio). A session's timing can sit
    # 10-30% off the next session's; interleaving cancels drift within a pair, and the site's
    # dense time becomes the median over all its pairs' reference runs — many fresh sessions.
    raw: dict[str, float] = {}
    ratios: dict[str, RatioTiming] = {}
    fresh_keys: set[str] = set()  # option timings measured now (cached once refined)
    failed: dict[str, str] = {}
    run_count = cached_count = 0
    ordered = sorted(plan.items(), key=lambda item: item[1][2] != DENSE)
    for key, (candidate, index, option, meta) in ordered:
        site = candidate.sites[index]
        hit = cache.get(key, meta)
        if hit is not None and (option == DENSE) == ("ratio" not in hit):
            if option == DENSE:
                raw[key] = Timing.from_json(hit).median_s
            else:
                ratios[key] = RatioTiming.from_json(hit)
            cached_count += 1
        else:
            try:
                isolated_model = builder(candidate, option, index)
                feed = isolated_feed(isolated_model, site.input_shape)
                if option == DENSE:
                    timing = timer(isolated_model, feed, runtime)
                    raw[key] = timing.median_s
                    cache.put(key, meta, timing.to_json())
                else:
                    reference = _reference(builder, candidate, option, index)
                    ratio = _time_against(reference, isolated_model, feed, runtime,
                                          injected_timer, pair_timer, raw.get(dense_key[key]))
                    ratios[key] = ratio
                    fresh_keys.add(key)
            except Exception as exc:
                if option == DENSE:
                    raise
                reason = _one_line(exc)
                logger.warning(
                    "cannot time %s on %s (%s); option dropped",
                    option_label(option),
                    candidate.name,
                    reason,
                )
                failed[key] = reason
                step(f"{candidate.op} {option_label(option)} failed")
                continue
            run_count += 1
        step(
            f"{candidate.op} {'x'.join(map(str, site.input_shape))}->"
            f"{'x'.join(map(str, site.output_shape))} {option_label(option)}"
        )
    if cached_count and not refresh and not _cache_still_holds(
            plan, raw, run_count, builder, timer, runtime):
        again = build_latency_table(
            model, analysis, options, runtime, cache_dir=cache_dir, use_cache=use_cache,
            progress=progress, isolated=isolated, timer=injected_timer, pair_timer=pair_timer,
            profile=profile, refresh=True)
        return dataclasses.replace(again, total_spread=total_spread)
    refined = _refine_fastest(plan, ratios, fresh_keys, dense_key, builder, runtime,
                              injected_timer, pair_timer, raw, cache)
    run_count += refined
    references: dict[str, list[float]] = {k: [v] for k, v in raw.items()}
    for key, ratio in ratios.items():
        references.setdefault(dense_key[key], []).append(ratio.reference_s)
    site_dense = {k: float(np.median(v)) for k, v in references.items()}
    savings: dict[str, float] = {}
    for key, ratio in ratios.items():
        if key in owner_key:
            savings[key] = site_dense[dense_key[key]] * (1.0 - ratio.ratio)
        else:
            raw[key] = ratio.ratio * site_dense[dense_key[key]]
    for key in list(raw):
        if key in site_dense:
            raw[key] = site_dense[key]

    def net(seconds: float) -> float:
        return max(seconds - overhead.median_s, _NET_FLOOR * seconds)

    def net_of(key: str) -> float:
        """Net seconds of a timing; a structure option is its site's time minus its saving."""
        if key in savings:
            return net(raw[owner_key[key]]) - savings[key]
        return net(raw[key])

    entries = []
    dropped: list[tuple[str, LayoutOption, str]] = []
    for candidate in analysis.candidates:
        rows_list, spreads = [], []
        for option, keys in per_candidate[candidate.name]:
            errors = [failed[k] for k in keys if k in failed]
            if errors:
                dropped.append((candidate.name, option, errors[0]))
                continue
            rows_list.append((option, float(sum(net_of(k) for k in keys))))
            spreads.append(max((ratios[k].ratio_rel_se for k in keys if k in ratios),
                               default=0.0))
        rows = tuple(rows_list)
        mapped = all(node in profile.node_times for node in candidate.node_names)
        profiled = profile.nodes_time(candidate.node_names) if mapped else None
        entries.append(CandidateLatency(candidate.name, candidate.node_names, profiled, rows,
                                        tuple(spreads)))

    to_total = profile.to_total(overhead.median_s)
    base, scale = _base_and_scale(profile, entries, to_total)
    entries = _structures_in_graph(entries, analysis, per_candidate, ratios, savings, profile,
                                   scale, to_total)
    if injected_timer is None and pair_timer is None:  # real timings only: runs whole models
        entries = _shared_in_context(entries, model, analysis, scale, profile.total_s, runtime,
                                     cache, env)
    table = LatencyTable(
        candidates=tuple(entries),
        base_s=base,
        dense_total_s=profile.total_s,
        scale=scale,
        overhead_s=overhead.median_s,
        environment=env,
        fingerprint=env_key,
        profile=profile,
        timings_run=run_count,
        timings_cached=cached_count,
        dropped=tuple(dropped),
        total_spread=total_spread,
    )
    logger.info(
        "latency table: %d candidates, %d timings measured, %d from cache; dense %.3f ms, "
        "base %.3f ms, isolation gap %+.3f ms, correction x%.3f",
        len(entries),
        run_count,
        cached_count,
        table.dense_total_s * 1e3,
        base * 1e3,
        table.gap_s * 1e3,
        scale,
    )
    return table


REFINE_FASTEST = 3
"""Per site, the fastest options are timed in this many more fresh session pairs."""
REFINE_SESSIONS = 2
DISTURBED = 1.25
"""A pair whose dense reference ran this far off the site's typical time is re-timed: on a
2-vCPU VM some fresh sessions run a 2-thread conv at 1-thread speed (2.9 ms instead of 1.6 ms)."""


def _refine_fastest(
    plan: Mapping[str, tuple[Candidate, int, LayoutOption, dict]],
    ratios: dict[str, RatioTiming], fresh: set[str], dense_key: Mapping[str, str],
    builder: IsolatedBuilder, runtime: RuntimeConfig, timer: Timer | None,
    pair_timer: PairTimer | None, raw: Mapping[str, float], cache: TimingCache,
) -> int:
    """Time each site's fastest few options again in fresh sessions; keep the median ratio.

    The minimum over dozens of noisy option timings is biased low, and one session can sit
    10-30% off the next (a grouped conv's NCHWc kernel runs up to 2x slower in some sessions).
    The fastest options decide the Amdahl bound and most of the DP's choices, so they get the
    median of ``1 + REFINE_SESSIONS`` session pairs. Before that, every pair whose dense reference
    ran far from that site's typical reference time (a disturbed session) is timed again, and
    disturbed pairs are left out of the medians. Returns how many timings were run. Every fresh
    option timing is written to the cache here, after refinement.
    """
    by_site: dict[str, list[str]] = {}
    for key in fresh:
        by_site.setdefault(dense_key[key], []).append(key)
    typical = {site: float(np.median([ratios[k].reference_s for k in keys]))
               for site, keys in by_site.items()}

    def disturbed(key: str, timing: RatioTiming) -> bool:
        """The pair's dense reference ran far off its typical time: a disturbed session."""
        ref = typical[dense_key[key]]
        return not ref / DISTURBED <= timing.reference_s <= ref * DISTURBED

    def again(key: str) -> RatioTiming:
        candidate, index, option, _ = plan[key]
        isolated_model = builder(candidate, option, index)
        feed = isolated_feed(isolated_model, candidate.sites[index].input_shape)
        return _time_against(_reference(builder, candidate, option, index), isolated_model,
                             feed, runtime,
                             timer, pair_timer, raw.get(dense_key[key]))

    count = 0
    for key in fresh:
        if disturbed(key, ratios[key]):
            ratios[key] = again(key)
            count += 1
    chosen = [key for site_keys in by_site.values()
              for key in sorted(site_keys, key=lambda k: ratios[k].ratio)[:REFINE_FASTEST]]
    runs: dict[str, list[RatioTiming]] = {key: [ratios[key]] for key in chosen}
    # Round-robin over the options, so one option's sessions are spread over the whole pass
    # rather than falling into the same few seconds of a noisy neighbour.
    for _ in range(REFINE_SESSIONS):
        for key in chosen:
            runs[key].append(again(key))
            count += 1
    for key, timings in runs.items():
        usable = [t for t in timings if not disturbed(key, t)] or timings
        middle = sorted(usable, key=lambda r: r.ratio)[len(usable) // 2]
        spread = float(np.std([r.ratio for r in usable]) / max(middle.ratio, 1e-12))
        ratios[key] = RatioTiming(middle.ratio, max(middle.ratio_rel_se, spread),
                                  middle.reference_s, middle.model_s,
                                  sum(r.pairs for r in timings))
    for key in fresh:
        cache.put(key, plan[key][3], ratios[key].to_json())
    return count


_CACHE_PROBES = 3
_CACHE_TOLERANCE = 1.25


def _cache_still_holds(
    plan: Mapping[str, tuple[Candidate, int, LayoutOption, dict]], raw: Mapping[str, float],
    fresh_count: int, builder: IsolatedBuilder, timer: Timer, runtime: RuntimeConfig,
) -> bool:
    """Re-time the heaviest cached dense sites; False when the machine no longer matches them.

    A cached table outlives the conditions it was measured in (a noisy neighbour then, a
    different CPU frequency now). The few heaviest dense timings are cheap to take again; when
    their median fresh/cached ratio is off by more than 25%, every cached timing is suspect.
    """
    dense = [(raw[k], k) for k, (_, _, option, _) in plan.items()
             if option == DENSE and k in raw]
    if not dense or fresh_count >= len(plan):
        return True
    ratios = []
    for cached_s, key in sorted(dense, reverse=True)[:_CACHE_PROBES]:
        candidate, index, option, _ = plan[key]
        isolated_model = builder(candidate, option, index)
        fresh = timer(isolated_model, isolated_feed(isolated_model,
                                                    candidate.sites[index].input_shape), runtime)
        ratios.append(fresh.median_s / max(cached_s, 1e-12))
    ratio = float(np.median(ratios))
    if 1 / _CACHE_TOLERANCE <= ratio <= _CACHE_TOLERANCE:
        return True
    logger.warning("cached latency timings are %.0f%% off what the heaviest nodes measure now; "
                   "timing everything again", abs(ratio - 1) * 100)
    return False


def _structures_in_graph(
    entries: list[CandidateLatency], analysis: GraphAnalysis,
    per_candidate: Mapping[str, list[tuple[LayoutOption, list[str]]]],
    ratios: Mapping[str, RatioTiming], savings: Mapping[str, float], profile: ModelProfile,
    scale: float, to_total: float,
) -> list[CandidateLatency]:
    """Express each structure option's saving in in-graph time, consistent with the total.

    Isolated, a structure saves ``(1 − r)·t_sub`` where ``r`` is its interleaved time ratio
    against the dense subgraph (robust) and ``t_sub`` the dense subgraph's isolated time (not:
    it moves with the session, and a structure at its narrowest saves almost all of it, so the
    Amdahl bound — the whole time over what little is left — moved 2x between runs). The
    profile measured the same nodes inside the whole model, and its shares are scaled to the
    total (``to_total``, as for the base time), so the saving used is
    ``(1 − r)·to_total·Σ profiled time of the structure's nodes`` (divided by the table's
    correction factor, since option times are scaled by it). Where the profiler did not map the
    structure's nodes, the isolated saving stays.
    """
    by_name = {c.name: c for c in analysis.candidates}
    fixed = []
    for entry in entries:
        cand = by_name.get(entry.name)
        context = cand.structure if cand is not None else None
        in_graph = (to_total * profile.nodes_time(context.structure.nodes)
                    if context is not None else 0.0)
        if context is None or in_graph <= 0 or scale <= 0:
            fixed.append(entry)
            continue
        keys_of = dict(per_candidate[entry.name])
        rows = []
        for option, seconds in entry.options:
            keys = keys_of.get(option, [])
            if option.layout == "structure" and keys and all(k in savings for k in keys):
                isolated = sum(savings[k] for k in keys)
                graph = sum((1.0 - ratios[k].ratio) * in_graph / scale for k in keys)
                seconds = seconds + isolated - graph
            rows.append((option, seconds))
        fixed.append(dataclasses.replace(entry, options=tuple(rows)))
    return fixed


def _shared_in_context(
    entries: list[CandidateLatency], model: onnx.ModelProto, analysis: GraphAnalysis,
    scale: float, total_s: float, runtime: RuntimeConfig, cache: TimingCache, env: Mapping,
) -> list[CandidateLatency]:
    """Scale each many-site candidate's savings by what a few of them save in the whole model.

    See :mod:`onnxprune.latency.in_context`.
    """
    from onnxprune.latency import in_context

    shared = {c.name: c for c in in_context.shared_candidates(analysis.candidates)}
    if not shared:
        return entries
    digest = _model_digest(model)
    feed = synthetic_feed(analysis.bound.as_tuples())

    def meta(name: str, option: LayoutOption) -> dict:
        return {"env": env, "what": "in_context_ratio", "model": digest, "candidate": name,
                "option": option.to_json(), "inputs": analysis.bound.as_tuples()}

    def cached(name: str, option: LayoutOption) -> float | None:
        hit = cache.get(fingerprint(meta(name, option)), meta(name, option))
        return float(hit["ratio"]) if hit and "ratio" in hit else None

    def store(name: str, option: LayoutOption, ratio: float) -> None:
        cache.put(fingerprint(meta(name, option)), meta(name, option), {"ratio": ratio})

    fixed = []
    for entry in entries:
        cand = shared.get(entry.name)
        if cand is None:
            fixed.append(entry)
            continue
        dense = entry.dense_s
        sampled = in_context.sample_options(entry.options)
        predicted = {o: scale * (dense - entry.raw_time(o)) for o in sampled}
        factor, _ = in_context.saving_factor(model, analysis.candidates, cand, predicted,
                                             total_s, feed, runtime, cached, store)
        rows = tuple((o, t if o == DENSE else dense - factor * (dense - t))
                     for o, t in entry.options)
        fixed.append(dataclasses.replace(entry, options=rows))
    return fixed


def _base_and_scale(
    profile: ModelProfile, entries: Sequence[CandidateLatency], to_total: float
) -> tuple[float, float]:
    """Fixed time and the isolated→in-graph correction (see the module docstring).

    ``to_total`` scales profiled kernel seconds to the unprofiled total
    (:meth:`ModelProfile.to_total`): a profile or a total from a disturbed session would
    otherwise move time between the prunable and the fixed part.

    Candidates whose nodes the profiler did not map contribute their *corrected* isolated time
    to the prunable part instead of a profiled one, so the base is not inflated by them.
    """
    mapped = [e for e in entries if e.profiled_s is not None]
    unmapped = [e for e in entries if e.profiled_s is None]
    profiled = to_total * sum(e.profiled_s for e in mapped)  # type: ignore[misc]
    isolated = sum(e.dense_s for e in mapped)
    scale = profiled / isolated if profiled > 0 and isolated > 0 else 1.0
    if unmapped:
        logger.warning(
            "the profiler did not map %d candidate(s) (%s); their in-graph time is estimated "
            "from isolation",
            len(unmapped),
            ", ".join(e.name for e in unmapped[:5]),
        )
    if profiled <= 0 < isolated:
        # Kernels too short to survive the profiler's inflation correction (microsecond nodes):
        # nothing was attributed, so isolation alone says what the candidates cost.
        profiled = isolated
    prunable = profiled + scale * sum(e.dense_s for e in unmapped)
    base = profile.total_s - prunable
    if base < 0:
        logger.warning(
            "profiled candidate time (%.3f ms) exceeds the measured total (%.3f ms); base set "
            "to 0 and the correction scaled to match",
            prunable * 1e3,
            profile.total_s * 1e3,
        )
        total_isolated = sum(e.dense_s for e in entries)
        scale = profile.total_s / total_isolated if total_isolated > 0 else 1.0
        base = 0.0
    return base, scale


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _model_digest(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()[:32]


_PROFILE_TOLERANCE = 1.15


def _consistent_profile(
    profile: ModelProfile,
    model: onnx.ModelProto,
    analysis: GraphAnalysis,
    runtime: RuntimeConfig,
    cache: TimingCache,
    env: Mapping,
) -> tuple[ModelProfile, float]:
    """Check the profile's whole-model time against fresh timings of the dense model.

    Returns the profile and the relative spread (MAD) of the dense time over fresh sessions.

    One burst of load from elsewhere during profiling inflates the measured total, hence the base
    time, hence every budget and bound derived from it — and a cached profile would keep that
    error forever. The dense model is timed in three fresh sessions (median of their medians); a
    profile more than 15% slower than the model runs now is taken again (and
    the cache overwritten); since load only ever makes runs slower, the smaller total is kept.
    """
    from onnxprune.graph.load import stamp_ir_version

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    timing = median_over_sessions(stamp_ir_version(probe).SerializeToString(),
                                  synthetic_feed(analysis.bound.as_tuples()), runtime)
    fresh = timing.median_s
    profiled = max(profile.total_s, profile.kernel_sum_s)
    if profiled > fresh * _PROFILE_TOLERANCE:
        logger.warning(
            "the whole-model profile says %.3f ms but the model runs in %.3f ms now (other load "
            "on the machine?); profiling again", profiled * 1e3, fresh * 1e3,
        )
        profile = _cached_profile(model, analysis, runtime, cache, env, refresh=True)
    if fresh < profile.total_s:
        profile = dataclasses.replace(profile, total_s=fresh)
    return profile, timing.mad_s / fresh if fresh > 0 else 0.0


def _cached_profile(
    model: onnx.ModelProto,
    analysis: GraphAnalysis,
    runtime: RuntimeConfig,
    cache: TimingCache,
    env: Mapping,
    refresh: bool = False,
) -> ModelProfile:
    meta = {
        "env": env,
        "what": "model_profile",
        "model": _model_digest(model),
        "inputs": analysis.bound.as_tuples(),
    }
    key = fingerprint(meta)
    hit = None if refresh else cache.get(key, meta)
    if hit is not None:
        try:
            return ModelProfile.from_json(hit)
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("ignoring corrupt cached profile (%s); re-profiling", exc)
    inflation_meta = {"env": env, "what": "profiler_inflation"}
    inflation_key = fingerprint(inflation_meta)
    inflation = cache.get(inflation_key, inflation_meta)
    if inflation is None or "seconds" not in inflation:
        inflation = {"seconds": profiler_inflation(runtime)}
        cache.put(inflation_key, inflation_meta, inflation)
    profile = profile_model(model, analysis.bound, runtime, inflation_s=float(inflation["seconds"]))
    cache.put(key, meta, profile.to_json())
    return profile
