"""The latency table: what each prunable node costs under each layout option, and what is fixed.

Built once per (model, deployment shapes, EP, threads) by :func:`build_latency_table`:

1. The whole model is profiled (:func:`onnxprune.latency.profile.profile_model`): its measured
   dense time ``T_dense`` (no profiler) and the profiled time of every candidate node.
   ``base = T_dense − Σ profiled candidate time`` is the part pruning cannot change.
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

from onnxprune.graph.candidates import Candidate, GraphAnalysis
from onnxprune.graph.shapes import graph_inputs
from onnxprune.latency.measure import Timing, run_overhead, time_model
from onnxprune.latency.profile import ModelProfile, profile_model, profiler_inflation
from onnxprune.layouts.base import DENSE, LayoutOption
from onnxprune.runtime import RuntimeConfig, synthetic_feed

logger = logging.getLogger("onnxprune")

# Bump when the way timings are taken changes, so old cache entries are not reused.
TIMING_SCHEMA = 2  # 2: measurement sessions run without thread spinning
# Net isolated times never drop below this fraction of the raw timing (noise guard).
_NET_FLOOR = 0.02

Progress = Callable[[int, int, str], None]
IsolatedBuilder = Callable[[Candidate, LayoutOption, int], onnx.ModelProto]
Timer = Callable[[onnx.ModelProto, Mapping[str, np.ndarray], RuntimeConfig], Timing]


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

    @property
    def dense_s(self) -> float:
        return self.raw_time(DENSE)

    def raw_time(self, option: LayoutOption) -> float:
        """Isolated seconds of ``option`` (no correction)."""
        for known, seconds in self.options:
            if known == option:
                return seconds
        raise KeyError(
            f"{self.name}: option {option.label!r} was not timed; timed: "
            + ", ".join(o.label for o, _ in self.options)
        )

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "nodes": list(self.nodes),
            "profiled_s": self.profiled_s,
            "options": [{"option": o.to_json(), "time_s": t} for o, t in self.options],
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

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{key}.json"

    def get(self, key: str, meta: Mapping) -> dict | None:
        if self.folder is None:
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
    }


def _default_isolated(candidate: Candidate, option: LayoutOption, site_index: int):
    from onnxprune.layouts import isolate

    if option == DENSE:
        return isolate.dense_isolated_model(candidate, site_index)
    return isolate.isolated_model(candidate, option, site_index=site_index)


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
    profile: ModelProfile | None = None,
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
        profile: a whole-model profile already taken (skips profiling).

    Returns:
        The table.
    """
    builder = isolated or _default_isolated
    timer = timer or time_model
    cache = TimingCache((cache_dir or default_cache_dir()) if use_cache else None)
    env = runtime_environment(runtime)
    env_key = fingerprint(env)

    # Unique isolated timings: signature key -> (candidate, site, option) that represents it.
    plan: dict[str, tuple[Candidate, int, LayoutOption, dict]] = {}
    per_candidate: dict[str, list[tuple[LayoutOption, list[str]]]] = {}
    for candidate in analysis.candidates:
        wanted = [DENSE, *[o for o in options.get(candidate.name, ()) if o != DENSE]]
        wanted = list(dict.fromkeys(wanted))
        rows = []
        for option in wanted:
            keys = []
            for index in range(len(candidate.sites)):
                meta = {
                    "env": env,
                    "code": _code_version(builder, option.layout),
                    "signature": site_signature(candidate, index, option),
                }
                key = fingerprint(meta)
                plan.setdefault(key, (candidate, index, option, meta))
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
    if profile is None:
        profile = _cached_profile(model, analysis, runtime, cache, env)
        profile = _consistent_profile(profile, model, analysis, runtime, cache, env)
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

    # 3. Isolated timings.
    raw: dict[str, float] = {}
    failed: dict[str, str] = {}
    run_count = cached_count = 0
    for key, (candidate, index, option, meta) in plan.items():
        site = candidate.sites[index]
        hit = cache.get(key, meta)
        if hit is not None:
            timing = Timing.from_json(hit)
            cached_count += 1
        else:
            try:
                isolated_model = builder(candidate, option, index)
                feed = isolated_feed(isolated_model, site.input_shape)
                timing = timer(isolated_model, feed, runtime)
            except Exception as exc:
                if option == DENSE:
                    raise
                reason = _one_line(exc)
                logger.warning(
                    "cannot time %s on %s (%s); option dropped",
                    option.label,
                    candidate.name,
                    reason,
                )
                failed[key] = reason
                step(f"{candidate.op} {option.label} failed")
                continue
            cache.put(key, meta, timing.to_json())
            run_count += 1
        raw[key] = timing.median_s
        step(
            f"{candidate.op} {'x'.join(map(str, site.input_shape))}->"
            f"{'x'.join(map(str, site.output_shape))} {option.label}"
        )

    def net(seconds: float) -> float:
        return max(seconds - overhead.median_s, _NET_FLOOR * seconds)

    entries = []
    dropped: list[tuple[str, LayoutOption, str]] = []
    for candidate in analysis.candidates:
        rows_list = []
        for option, keys in per_candidate[candidate.name]:
            errors = [failed[k] for k in keys if k in failed]
            if errors:
                dropped.append((candidate.name, option, errors[0]))
                continue
            rows_list.append((option, float(sum(net(raw[k]) for k in keys))))
        rows = tuple(rows_list)
        mapped = all(node in profile.node_times for node in candidate.node_names)
        profiled = profile.nodes_time(candidate.node_names) if mapped else None
        entries.append(CandidateLatency(candidate.name, candidate.node_names, profiled, rows))

    base, scale = _base_and_scale(profile, entries)
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


def _base_and_scale(
    profile: ModelProfile, entries: Sequence[CandidateLatency]
) -> tuple[float, float]:
    """Fixed time and the isolated→in-graph correction (see the module docstring).

    Candidates whose nodes the profiler did not map contribute their *corrected* isolated time
    to the prunable part instead of a profiled one, so the base is not inflated by them.
    """
    mapped = [e for e in entries if e.profiled_s is not None]
    unmapped = [e for e in entries if e.profiled_s is None]
    profiled = sum(e.profiled_s for e in mapped)  # type: ignore[misc]
    isolated = sum(e.dense_s for e in mapped)
    scale = profiled / isolated if profiled > 0 and isolated > 0 else 1.0
    if unmapped:
        logger.warning(
            "the profiler did not map %d candidate(s) (%s); their in-graph time is estimated "
            "from isolation",
            len(unmapped),
            ", ".join(e.name for e in unmapped[:5]),
        )
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
) -> ModelProfile:
    """Check the profile's whole-model time against a fresh ~1 s timing of the dense model.

    One burst of load from elsewhere during profiling inflates the measured total, hence the base
    time, hence every budget and bound derived from it — and a cached profile would keep that
    error forever. A profile more than 15% slower than the model runs now is taken again (and
    the cache overwritten); since load only ever makes runs slower, the smaller total is kept.
    """
    from onnxprune.graph.load import stamp_ir_version

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    fresh = time_model(stamp_ir_version(probe), synthetic_feed(analysis.bound.as_tuples()),
                       runtime, max_seconds=1.0).median_s
    if profile.total_s > fresh * _PROFILE_TOLERANCE:
        logger.warning(
            "the whole-model profile says %.3f ms but the model runs in %.3f ms now (other load "
            "on the machine?); profiling again", profile.total_s * 1e3, fresh * 1e3,
        )
        profile = _cached_profile(model, analysis, runtime, cache, env, refresh=True)
    if fresh < profile.total_s:
        profile = dataclasses.replace(profile, total_s=fresh)
    return profile


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
