"""The pruning run, stage by stage: analyse, time, solve, allocate, materialize, verify, write.

:func:`prune` is the whole library API. Each stage lives in its own module; this one only wires
them, decides what a user mistake is, and keeps the promise that ``OUT`` is written only after the
model has been checked (valid, exact against masked-dense, and — with a target — measured to meet
it), atomically.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxprune.allocate.budget import (
    AllocationProblem,
    build_problem,
    format_unreachable,
    granularity,
)
from onnxprune.allocate.loss import fidelity_scorer
from onnxprune.calib.collect import collect_hessians, poorly_conditioned
from onnxprune.calib.dataset import CalibSet, check_against_model, load_calib_dir, load_calib_reader
from onnxprune.calib.stitch import StitchedRunner
from onnxprune.common.errors import TargetUnreachableError, UserError
from onnxprune.common.runtime import RuntimeConfig, resolve_provider, synthetic_feed
from onnxprune.config.settings import PruneConfig
from onnxprune.contract.attempt import Attempt, Progress, Realizer
from onnxprune.contract.rounds import run_contract
from onnxprune.contract.verify import check_exact, require_same_graph
from onnxprune.fidelity import Fidelity, FidelityBound, Metric, Scorer, describe, load_metric
from onnxprune.graph.candidates import Candidate, GraphAnalysis, SkippedNode
from onnxprune.graph.candidates import find_candidates as _find_candidates
from onnxprune.graph.load import load_model, save_model_atomic
from onnxprune.graph.precision import LowPrecision
from onnxprune.graph.prepare import prepare_model
from onnxprune.graph.shapes import BoundInputs, bind_input_shapes
from onnxprune.latency.anchor import bound_cache
from onnxprune.latency.measure import SpeedResult
from onnxprune.latency.source import MEASURED, TimingSource
from onnxprune.layouts.base import DENSE, LayoutOption, PrunedWeight, is_fast_on
from onnxprune.layouts.registry import (
    LAYOUTS,
    candidate_options,
    get_layout,
    layouts_fast_on,
)
from onnxprune.recover.stage import recovery_stage
from onnxprune.solve.database import build_database
from onnxprune.structures.context import discover_and_attach, layouts_for

logger = logging.getLogger("onnxprune")

LOW_PRECISION_RTOL = 3e-2
"""Exactness tolerance of an fp16/bf16 output against the float32 masked-dense reference: the
half-precision rounding of weights and activations, not a rewrite error (float32: 1e-3)."""

@dataclass
class LayerResult:
    """What happened to one candidate."""

    name: str
    op: str
    nodes: tuple[str, ...]
    option: LayoutOption
    err: float
    time_dense_s: float | None = None
    time_after_s: float | None = None
    weights_before: int = 0
    weights_after: int = 0


@dataclass
class Report:
    """Everything the terminal summary and the JSON report show.

    ``fidelity`` is measured on the held-out verify part of the calibration data; when it is None,
    ``fidelity_note`` says why. ``at_target`` is the fidelity of the allocation at the requested
    speed when that broke the bound (the written model, if any, is then the fastest within it).
    """

    input_path: str
    output_path: str | None
    mode: str
    target_speedup: float | None
    provider: str
    threads: int | None
    input_shapes: dict[str, tuple[int, ...]]
    layers: list[LayerResult] = field(default_factory=list)
    skipped: list[SkippedNode] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    predicted_speedup: float | None = None
    amdahl_bound: float | None = None
    amdahl_bound_spread: float | None = None
    amdahl_bound_predicted: float | None = None
    measured: SpeedResult | None = None
    rounds: list[dict] = field(default_factory=list)
    calibration: dict | None = None
    search: dict | None = None
    fidelity: Fidelity | None = None
    fidelity_note: str | None = None
    bound: FidelityBound | None = None
    at_target: Fidelity | None = None
    within_bound: bool | None = None
    structures: list[dict] = field(default_factory=list)
    structures_blocked: list[dict] = field(default_factory=list)
    exactness: float | None = None
    size_before: int = 0
    size_after: int = 0
    fingerprint: str | None = None
    wall_s: float = 0.0
    written: bool = False
    met_target: bool | None = None
    # The latency table's dense total and fixed (not prunable) part, for the report's time budget.
    dense_time: dict | None = None
    # Global recovery of the written (or refused) model: Recovery.to_json() plus "kept".
    recovery: dict | None = None


def _emit(progress: Progress | None, stage: str, done: int, total: int) -> None:
    if progress:
        progress(stage, done, total)


def _load_calibration(config: PruneConfig, model: onnx.ModelProto) -> CalibSet | None:
    if config.calib_dir is not None:
        calib = load_calib_dir(Path(config.calib_dir), config.calib_samples)
    elif config.calib_reader is not None:
        calib = load_calib_reader(config.calib_reader, config.calib_samples)
    else:
        return None
    return check_against_model(calib, model)


def _allowed_layouts(config: PruneConfig, provider: str) -> list[str]:
    if config.nm is not None:
        return ["nm"]
    names = list(config.layouts)
    for name in names:
        get_layout(name)  # raises with the available names listed
    if config.sparsity is not None:
        if len(names) != 1 or names == ["dense"]:
            raise UserError(
                "--sparsity needs exactly one layout in --layouts (one of: "
                + ", ".join(n for n in LAYOUTS if n != "dense") + ")"
            )
        return names
    return [n for n in (names or layouts_fast_on(provider)) if n != "dense"]


def _options_for(
    candidates: Sequence[Candidate], layouts: Sequence[str], config: PruneConfig,
    skipped: list[SkippedNode], producers: set[str] = frozenset(),
) -> dict[str, list[LayoutOption]]:
    """Options per candidate (dense first); in the uniform modes, the one option nearest the
    requested level or pattern, and candidates with none move to ``skipped`` with the reason."""
    if config.speedup is not None:
        return {c.name: _capped(candidate_options(c, _node_layouts(c, layouts, producers, config),
                                                  config.levels), c, config)
                for c in candidates}
    levels = [1.0 - config.nm[0] / config.nm[1]] if config.nm is not None else [config.sparsity]
    options: dict[str, list[LayoutOption]] = {}
    for cand in candidates:
        found: list[LayoutOption] = []
        reasons = []
        rule = config.override_for(cand.node_names)
        cand_levels = levels if rule is None or rule.max_level is None \
            else [min(levels[0], rule.max_level)]
        for name in _node_layouts(cand, layouts, producers, config):
            if name == "dense":
                continue
            opts, reason = get_layout(name).options(cand, cand_levels)
            if config.nm is not None:
                opts = [o for o in opts if dict(o.params).get("n") == config.nm[0]
                        and dict(o.params).get("m") == config.nm[1]]
                if not opts and reason is None:
                    reason = f"{config.nm[0]}:{config.nm[1]} does not fit its weight"
            if config.sparsity is not None and opts:
                # Nearest level; among equal levels the coarsest block, usually the fastest.
                opts = [min(opts, key=lambda o: (round(abs(o.level - cand_levels[0]), 6),
                                                 -granularity(o)))]
            opts = _capped(opts, cand, config)
            if not opts and rule is not None and rule.max_level is not None and reason is None:
                reason = f"no option within max_level {rule.max_level:g} ({rule.source})"
            found.extend(opts)
            if reason:
                reasons.append(f"{name}: {reason}")
        if not found:
            skipped.append(SkippedNode(cand.sites[0].node, cand.op,
                                       "; ".join(reasons) or "no option fits", cand.macs))
            continue
        options[cand.name] = [DENSE, *found]
    return options


def _node_layouts(cand: Candidate, layouts: Sequence[str], producers: set[str],
                  config: PruneConfig) -> list[str]:
    """The layouts ``cand`` may take: the run's, or those a per-node rule forces."""
    rule = config.override_for(cand.node_names)
    if rule is not None and rule.allowed_layouts:
        layouts = rule.allowed_layouts
    if (cand.structure is not None or cand.name in producers) and "structure" not in layouts:
        layouts = [*layouts, "structure"]  # in a structure a rule forced: nothing else
    return layouts_for(cand, layouts, producers)


def _capped(options: list[LayoutOption], cand: Candidate,
            config: PruneConfig) -> list[LayoutOption]:
    """Options above a per-node rule's ``max_level`` dropped (dense always stays)."""
    rule = config.override_for(cand.node_names)
    if rule is None or rule.max_level is None:
        return options
    return [o for o in options if o.layout == "dense" or o.level <= rule.max_level + 1e-9]


def _structure_allowed(config: PruneConfig, node_names: Mapping[str, tuple[str, ...]]):
    """Whether a found structure may be used: every per-node rule on its nodes allows it."""
    def keep(structure) -> bool:
        for name in (*structure.producers, structure.consumer):
            rule = config.override_for(node_names.get(name, (name,)))
            if rule is None or not rule.allowed_layouts:
                continue
            if "structure" not in rule.allowed_layouts:
                return False
            if rule.structure_kinds and structure.kind not in rule.structure_kinds:
                return False
        return True
    return keep


def _forced_structures_only(keep, forcing: set[str]):
    """When the run does not use structures, only those through a node whose rule forces them."""
    def keep_forced(structure) -> bool:
        nodes = {*structure.producers, structure.consumer}
        return bool(nodes & forcing) and keep(structure)
    return keep_forced


def _configured_layouts(config: PruneConfig) -> dict:
    """Layout objects whose behaviour the config changes (the rest come from the registry)."""
    from onnxprune.layouts.unstructured import Unstructured

    return {"unstructured": Unstructured(sparse_storage=config.sparse_storage)}


def _nonzeros(solution: PrunedWeight) -> int:
    return int(np.count_nonzero(solution.mask))


def _measure(config: PruneConfig, calib: CalibSet) -> FidelityBound:
    """The measures this run's fidelity is judged and searched by (also with the bound off)."""
    metric = None
    if config.metric is not None:
        metric = (load_metric(config.metric) if isinstance(config.metric, str)
                  else Metric(getattr(config.metric, "__name__", "metric"), config.metric))
    max_error, max_channel_error = config.error_limits
    drop = config.max_accuracy_drop if calib.has_labels else None
    return FidelityBound(max_error, max_channel_error, drop, metric, config.metric_limit)


@dataclass(frozen=True)
class Analysed:
    """Stage 1: the model at its deployment shapes, what can be pruned, and how.

    Attributes:
        model: the input model (unique node names, IR version stamped).
        dense_payload: its serialized bytes (the A of every speed comparison).
        bound_shapes: the deployment input shapes.
        runtime: the EP and threads.
        mode: "speedup", "sparsity" or "nm".
        analysis: the candidates at those shapes (structures attached).
        candidates: the candidates this run prunes (exclusions and option-less ones removed).
        options: per candidate name, its options (dense first).
    """

    model: onnx.ModelProto
    dense_payload: bytes
    bound_shapes: BoundInputs
    runtime: RuntimeConfig
    mode: str
    analysis: GraphAnalysis
    candidates: tuple[Candidate, ...]
    options: Mapping[str, Sequence[LayoutOption]]
    precision: LowPrecision | None = None


@dataclass(frozen=True)
class Calibrated:
    """Stage 2: the calibration data split three ways, the stitched model and timing inputs.

    Everything is None without calibration data except ``feeds`` (synthetic inputs, plus real
    calibration inputs at the deployment shapes when there are some). ``measure`` is what
    fidelity is judged and searched by; ``bound`` is the same when the bound is on (None with
    ``--no-fidelity-bound``). ``verify_scorer`` holds the dense outputs of the verify part (and
    the metric's dense score: a metric that cannot score this model fails here, before timing).
    """

    calib: CalibSet | None
    fit: CalibSet | None
    search: CalibSet | None
    verify: CalibSet | None
    runner: StitchedRunner | None
    feeds: Mapping[str, Mapping[str, np.ndarray]]
    bound: FidelityBound | None
    measure: FidelityBound | None = None
    verify_scorer: Scorer | None = None


def prune(
    input_path: str | Path,
    output_path: str | Path,
    config: PruneConfig,
    progress: Progress | None = None,
    calibration: CalibSet | None = None,
    timing: TimingSource = MEASURED,
) -> Report:
    """Prune ``input_path`` and write ``output_path``; see :class:`PruneConfig` for the options.

    ``timing`` answers the run's speed questions (the latency table and the final measurement);
    the default measures on the EP, tests pass a seeded
    :class:`~onnxprune.latency.synthetic.SyntheticTiming`.

    The stages, each returning what the next needs: analyse the graph (candidates, structures,
    options), calibrate (three-way split, stitched model), time (the allocation problem, speedup
    mode only), solve (the per-layer database), then the uniform path or the two-sided contract
    loop, and write.

    ``calibration`` is data already read (the Python API's ``calibration_data_reader``); it
    takes the place of ``config.calib_dir`` / ``config.calib_reader``.

    Returns:
        The report (also when ``config.dry_run``: then nothing is written).

    Raises:
        UserError: bad input or options (exit code 2).
        TargetUnreachableError: the speedup cannot be met within the fidelity bound (exit code 3);
            nothing is written unless ``config.best_effort``.
    """
    started = time.monotonic()
    in_path, out_path = _check_paths(input_path, output_path)
    if config.max_accuracy_drop is not None and config.calib_dir is None \
            and config.calib_reader is None and calibration is None:
        raise UserError("--max-accuracy-drop needs labelled calibration data (--calib)")
    graph, report = _analyse(in_path, out_path, config)
    data = _calibrate(graph, config, report, calibration)
    problem = _time(graph, config, report, progress, timing) if graph.mode == "speedup" else None
    options = problem.options if problem is not None else graph.options
    database = _solve(graph, data, options, report, progress)
    realizer = _realizer(config, graph, data, progress, timing, report)
    if problem is None:
        return _uniform(graph, data, database, realizer, report, config, out_path, started)
    try:
        return _speedup_mode(config, problem, list(graph.candidates), database, realizer,
                             data, report, out_path, started, progress)
    except TargetUnreachableError as exc:
        if exc.report is None:
            exc.report = report
        report.wall_s = time.monotonic() - started
        raise


def _check_paths(input_path: str | Path, output_path: str | Path) -> tuple[Path, Path]:
    """The input and output paths, refused when they are the same file or OUT is a folder."""
    in_path, out_path = Path(input_path), Path(output_path)
    if in_path.exists() and out_path.exists() and in_path.resolve() == out_path.resolve():
        raise UserError("the output path is the input path; choose another output file")
    if out_path.is_dir():
        raise UserError(f"the output path {out_path} is a directory")
    return in_path, out_path


def _realizer(config: PruneConfig, graph: Analysed, data: Calibrated,
              progress: Progress | None, timing: TimingSource = MEASURED,
              report: Report | None = None) -> Realizer:
    """The stage that materializes, checks, recovers and measures a choice of every candidate."""
    return Realizer(
        config, graph.model, graph.dense_payload, graph.candidates, graph.runtime, data.feeds,
        _configured_layouts(config), runner=data.runner, fit=data.fit,
        verify_scorer=data.verify_scorer, progress=progress, precision=graph.precision,
        timing=timing,
        recovery=recovery_stage(config, data.runner, data.fit, data.search, report),
        bound_measure=data.measure,
    )


def _analyse(in_path: Path, out_path: Path, config: PruneConfig) -> tuple[Analysed, Report]:
    """Load, bind shapes, find candidates and structures, and the options of each candidate."""
    # Pinned inputs folded, names, IR version, float32 twin of half precision (graph/prepare.py):
    # the dense reference of every comparison is ``original``; the output is lowered back to its
    # precision and timed against it.
    prepared = prepare_model(load_model(in_path), config.fix)
    original, model, precision, fixed = (prepared.original, prepared.model, prepared.precision,
                                         prepared.fixed)
    bound_shapes = bind_input_shapes(model, config.shapes)
    provider = resolve_provider(config.provider)
    runtime = RuntimeConfig(provider=provider, threads=config.threads)
    layouts = _allowed_layouts(config, provider)
    mode = "speedup" if config.speedup is not None else ("nm" if config.nm else "sparsity")
    report = Report(str(in_path), None if config.dry_run else str(out_path), mode,
                    config.speedup, provider, config.threads, bound_shapes.shapes())
    report.notes.extend(bound_shapes.notes)
    report.notes.extend(fixed.notes)
    if precision is not None:
        _check_runtime_runs(original, runtime, precision, in_path)
        report.notes.append(
            f"{precision.name} model: solved in float32, written back in {precision.name}; "
            "per-layer times are from the float32 twin, the final speedup is measured on the "
            f"{precision.name} graph")
    report.size_before = in_path.stat().st_size

    analysis = _find_candidates(model, bound_shapes)
    candidates, skipped = _select(analysis, config)
    report.skipped = skipped
    producers: set[str] = set()
    forced = {name for rule in config.overrides for name in rule.allowed_layouts}
    if ("structure" in layouts or "structure" in forced) and candidates:
        keep = _structure_allowed(config, {c.name: c.node_names for c in candidates})
        if "structure" not in layouts:  # only where a rule forces it
            forcing = [c.name for c in candidates
                       if "structure" in getattr(config.override_for(c.node_names),
                                                 "allowed_layouts", ())]
            keep = _forced_structures_only(keep, set(forcing))
        analysis, candidates, producers, found = discover_and_attach(model, analysis, candidates,
                                                                     keep=keep)
        report.structures = [s.to_json() for s in found.structures]
        report.structures_blocked = [{"producer": b.producer, "reason": b.reason}
                                     for b in found.blocked]
    if not candidates:
        raise _nothing_to_prune(analysis, mode)
    options = _options_for(candidates, layouts, config, report.skipped, producers)
    candidates = [c for c in candidates if c.name in options]
    if not candidates:
        raise _nothing_to_prune(analysis, mode, "no prunable node admits the requested layout")
    slow = [c for c in candidates
            if not any(is_fast_on(get_layout(o.layout), provider) for o in options[c.name][1:])]
    if slow and mode != "speedup":
        report.notes.append(
            f"{layouts[0]} gives no speedup on {provider} (ONNX Runtime does not skip zeros): "
            "expect compression or a TensorRT speedup only"
        )
    graph = Analysed(model, original.SerializeToString(), bound_shapes, runtime, mode, analysis,
                     tuple(candidates), options, precision)
    return graph, report


def _check_runtime_runs(model: onnx.ModelProto, runtime: RuntimeConfig,
                        precision: LowPrecision, path: Path) -> None:
    """Refuse a half-precision model the EP cannot run (ORT's CPU EP has no bfloat16 MatMul or
    Conv): the output would be timed and deployed on that EP, so nothing useful can be written."""
    from onnxprune.common.runtime import make_session

    try:
        make_session(model, runtime)
    except Exception as exc:  # noqa: BLE001 - ORT raises several types for "cannot run"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{path}: ONNX Runtime ({runtime.provider}) cannot run this {precision.name} model "
            f"({first}); onnxprune prunes only models the runtime runs — convert it to float32 "
            "or float16, or choose a --provider that supports it") from None


def _calibrate(graph: Analysed, config: PruneConfig, report: Report,
               calibration: CalibSet | None = None) -> Calibrated:
    """Read the calibration data, split it (fit / search / verify), open the stitched model."""
    calib = (check_against_model(calibration, graph.model) if calibration is not None
             else _load_calibration(config, graph.model))
    feeds = {"synthetic": synthetic_feed(graph.bound_shapes.as_tuples(), seed=config.seed)}
    if calib is None:
        report.fidelity_note = ("not measured: no calibration data, so onnxprune cannot tell "
                                "whether the pruned model still does its job; pass --calib DIR")
        report.notes.append(
            "no calibration data: weights are chosen by magnitude and not reconstructed, so "
            "accuracy will suffer, and fidelity is not measured; pass --calib DIR"
        )
        logger.warning("no calibration data (--calib): using the data-free magnitude proxy; "
                       "fidelity is not measured")
        if config.metric is not None:
            raise UserError("--metric needs calibration data to score the pruned model on "
                            "(--calib DIR)")
        return Calibrated(None, None, None, None, None, feeds, None)
    if config.max_accuracy_drop is not None and not calib.has_labels:
        raise UserError("--max-accuracy-drop needs labels in the calibration data "
                        "(__labels__ in the .npz files)")
    fit, search, verify = calib.partition()
    runner = StitchedRunner(graph.model, graph.candidates,
                            expose=[s.activation for c in graph.candidates for s in c.sites])
    report.calibration = {
        "source": calib.source, "samples": calib.samples, "batches": len(calib.batches),
        "labels": calib.has_labels, "fit_samples": fit.samples,
        "search_samples": search.samples, "verify_samples": verify.samples,
    }
    if not verify.samples < calib.samples:
        report.fidelity_note = (f"measured on the same {calib.samples} sample(s) the "
                                "statistics came from (too few to hold any out)")
    real = calib.feed_at(graph.bound_shapes.shapes())
    if real is not None:
        feeds["calibration"] = real
    measure = _measure(config, calib)
    bound = measure if config.fidelity_bound else None
    report.bound = bound
    verify_scorer = fidelity_scorer(runner, verify, measure.metric)
    return Calibrated(calib, fit, search, verify, runner, feeds, bound, measure, verify_scorer)


def _time(graph: Analysed, config: PruneConfig, report: Report,
          progress: Progress | None, timing: TimingSource = MEASURED) -> AllocationProblem:
    """The latency table and the allocation problem; refuse a target beyond the bound."""
    problem = build_problem(graph.model, graph.analysis, graph.candidates, graph.options,
                            graph.runtime, config, progress=progress, timing=timing)
    problem.anchor(graph.model, graph.runtime, synthetic_feed(graph.bound_shapes.as_tuples()),
                   progress=lambda done, total: _emit(progress, "measuring the Amdahl bound",
                                                      done, total),
                   sessions=config.verify_sessions, seconds=config.verify_seconds,
                   target=config.speedup, timing=timing,
                   cache=bound_cache(config.cache_dir) if timing.persistent else None)
    report.amdahl_bound = problem.amdahl_bound
    report.amdahl_bound_spread = problem.bound_spread
    report.amdahl_bound_predicted = problem.predicted_bound
    report.fingerprint = problem.fingerprint
    report.dense_time = {"total_s": problem.total_s, "base_s": problem.base_s}
    assert config.speedup is not None
    reach = problem.amdahl_bound * (1 + problem.bound_spread)
    if config.speedup > reach and not config.best_effort:
        raise TargetUnreachableError(format_unreachable(problem, config.speedup), report)
    if config.speedup > problem.amdahl_bound:
        report.notes.append(
            f"the {config.speedup:g}x target lies within the measurement spread of the "
            f"Amdahl bound ({problem.amdahl_bound:.2f}x ± "
            f"{problem.amdahl_bound * problem.bound_spread:.2f}): the fastest allocation is "
            "tried and the measured speed decides"
        )
    return problem


def _solve(graph: Analysed, data: Calibrated, options: Mapping[str, Sequence[LayoutOption]],
           report: Report, progress: Progress | None) -> dict[str, list[PrunedWeight]]:
    """Layer statistics on the fit data (and held-out ones on the search data), then every
    option of every candidate solved once."""
    candidates = graph.candidates
    hessians = heldout = None
    if data.fit is not None and data.runner is not None:
        total = len(data.fit.batches)
        accumulators = collect_hessians(
            data.runner, candidates, data.fit,
            progress=lambda d, t: _emit(progress, "collecting statistics", d, t),
        )
        hessians = {name: acc.H for name, acc in accumulators.items()}
        for cand in candidates:
            rank, k = poorly_conditioned(hessians[cand.name])
            if rank < 0.5 * k:
                report.notes.append(
                    f"{cand.name}: its inputs span only {rank} of {k} dimensions on the "
                    "calibration data (rank-deficient statistics, solved with dampening); if "
                    "deployment inputs vary more, calibrate with more varied data"
                )
        _emit(progress, "collecting statistics", total, total)
        if data.search is not None and data.calib is not None and \
                data.search.samples < data.calib.samples:
            heldout = {name: acc.H for name, acc in
                       collect_hessians(data.runner, candidates, data.search).items()}
    solved: dict[str, int] = {"n": 0}

    def on_solved(_name: str) -> None:
        solved["n"] += 1
        _emit(progress, "solving layer options", solved["n"], len(candidates))

    return build_database(candidates, options, hessians, progress=on_solved, heldout=heldout)


def _uniform(graph: Analysed, data: Calibrated, database: Mapping[str, Sequence[PrunedWeight]],
             realizer: Realizer, report: Report, config: PruneConfig, out_path: Path,
             started: float) -> Report:
    """--sparsity / --nm: every candidate at its one option; the fidelity bound still holds."""
    candidates = graph.candidates
    chosen = {c.name: database[c.name][-1] for c in candidates}
    if config.dry_run:
        return _dry(report, candidates, chosen, None, started)
    attempt = realizer.realize(chosen)
    bound = data.bound
    if attempt.fidelity is not None and bound is not None and not bound.holds(attempt.fidelity):
        report.within_bound = False
        report.fidelity = attempt.fidelity
        if not config.best_effort:
            _fill_layers(report, candidates, attempt.chosen, None)
            raise TargetUnreachableError(
                f"the pruned model breaks the fidelity bound on held-out calibration "
                f"samples: {'; '.join(bound.violations(attempt.fidelity))} "
                f"({describe(attempt.fidelity)}); nothing written. Prune less, loosen "
                "the bound, or pass --best-effort to write it anyway", report
            )
    return _finish(realizer.measure(attempt), report, realizer, data.calib, out_path, started)


def _speedup_mode(config: PruneConfig, problem: AllocationProblem,
                  candidates: Sequence[Candidate], database: Mapping[str, Sequence[PrunedWeight]],
                  realizer: Realizer, data: Calibrated, report: Report, out_path: Path,
                  started: float, progress: Progress | None) -> Report:
    """Dry run, or the contract loop and writing its result."""
    bound, calib, search = data.bound, data.calib, data.search
    if config.dry_run:
        from onnxprune.allocate.dp import solve_dp

        goal = min(config.speedup, problem.amdahl_bound * 0.999)
        choice = solve_dp(problem.layer_choices(database), problem.budget_for(goal))
        if choice is None:
            raise TargetUnreachableError(format_unreachable(problem, config.speedup))
        chosen = {c.name: database[c.name][j] for c, j in zip(candidates, choice, strict=True)}
        return _dry(report, candidates, chosen, problem, started)
    search_scorer = (fidelity_scorer(data.runner, search, data.measure.metric)
                     if data.runner is not None and search is not None and data.measure is not None
                     else None)
    result = run_contract(config, problem, candidates, database, realizer, bound=bound,
                          search_fidelity=search_scorer, measure=data.measure,
                          search_samples=search.samples if search else 0, progress=progress)
    report.rounds = list(result.rounds)
    report.search = result.search
    report.at_target = result.at_target.fidelity if result.at_target else None
    # --best-effort writes the fastest model found, but never one slower than the input.
    slower = (result.attempt is not None and not result.met
              and result.attempt.measured is not None and result.attempt.measured.speedup < 1.0)
    if result.attempt is None or (not result.met and not config.best_effort) or slower:
        if result.attempt is not None:
            report.predicted_speedup = result.attempt.predicted
            report.measured = result.attempt.measured
            report.fidelity = result.attempt.fidelity
            if bound is not None and result.attempt.fidelity is not None:
                report.within_bound = bound.holds(result.attempt.fidelity)
            report.met_target = False
            _fill_layers(report, candidates, result.attempt.chosen, problem)
        message = result.message or format_unreachable(problem, config.speedup)
        if slower and config.best_effort:
            message = (f"{message.split('; nothing written')[0]}; --best-effort wrote nothing: "
                       f"the fastest model found measured {result.attempt.measured.speedup:.2f}x, "
                       "slower than the input")
        raise TargetUnreachableError(message)
    attempt = result.attempt
    report.predicted_speedup = attempt.predicted
    report.met_target = result.met
    return _finish(attempt, report, realizer, calib, out_path, started, problem)


def _dry(report: Report, candidates: Sequence[Candidate], chosen: Mapping[str, PrunedWeight],
         problem: AllocationProblem | None, started: float) -> Report:
    if problem is not None:
        report.predicted_speedup = problem.predicted_speedup(chosen)
    _fill_layers(report, candidates, chosen, problem)
    report.wall_s = time.monotonic() - started
    return report


def _select(analysis: GraphAnalysis, config: PruneConfig) -> tuple[list[Candidate],
                                                                   list[SkippedNode]]:
    """Candidates minus those ``--exclude`` or a per-node rule's ``exclude`` names."""
    skipped = list(analysis.skipped)
    pattern = re.compile(config.exclude) if config.exclude else None
    kept = []
    for cand in analysis.candidates:
        rule = config.override_for(cand.node_names)
        if pattern is not None and any(pattern.search(name) for name in cand.node_names):
            skipped.append(SkippedNode(cand.name, cand.op, "excluded by --exclude", cand.macs))
        elif rule is not None and rule.exclude:
            skipped.append(SkippedNode(cand.name, cand.op, f"excluded by {rule.source}",
                                       cand.macs))
        else:
            kept.append(cand)
    return kept, skipped


def _nothing_to_prune(analysis: GraphAnalysis, mode: str, detail: str | None = None):
    reasons = "; ".join(f"{s.node}: {s.reason}" for s in analysis.skipped[:5])
    message = detail or "the model has no prunable node (MatMul/Gemm/Conv with a constant weight)"
    if reasons:
        message += f" — skipped: {reasons}"
    if mode == "speedup":
        return TargetUnreachableError(message)
    return UserError(message)


def _fill_layers(report: Report, candidates: Sequence[Candidate],
                 chosen: Mapping[str, PrunedWeight], problem: AllocationProblem | None) -> None:
    report.layers = []
    for cand in candidates:
        solution = chosen[cand.name]
        report.layers.append(LayerResult(
            name=cand.name, op=cand.op, nodes=cand.node_names, option=solution.option,
            err=solution.err,
            time_dense_s=problem.option_time(cand.name, DENSE) if problem else None,
            time_after_s=problem.option_time(cand.name, solution.option) if problem else None,
            weights_before=int(cand.weight.size), weights_after=_nonzeros(solution),
        ))


def _finish(attempt: Attempt, report: Report, realizer: Realizer, calib: CalibSet | None,
            out_path: Path, started: float, problem: AllocationProblem | None = None) -> Report:
    """Check exactness against masked-dense, then write atomically and complete the report."""
    _fill_layers(report, realizer.candidates, attempt.chosen, problem)
    if all(layer.option.layout == "dense" for layer in report.layers):
        report.notes.append("every node stayed dense: nothing was pruned")
    reference = realizer.runner or StitchedRunner(realizer.model, realizer.candidates)
    check_feed = calib.batches[0] if calib is not None else realizer.timing_feeds["synthetic"]
    # A recovered model is checked through the one-shot model it was tuned from: that one
    # against masked-dense, and the recovered one has its graph (only initializer values differ;
    # recovery checked its torch run against ONNX Runtime).
    checked = attempt.pruned
    if attempt.oneshot is not None:
        checked = attempt.oneshot
        if realizer.precision is not None:
            from onnxprune.graph.precision import lower

            checked = lower(checked, realizer.precision)
        require_same_graph(checked, attempt.pruned)
    report.exactness = check_exact(checked, reference, attempt.weights, check_feed,
                                   **({"rtol": LOW_PRECISION_RTOL} if realizer.precision else {}))
    report.recovery = attempt.recovery
    if (line := attempt.recovery_note()) is not None:
        report.notes.append(line)
    report.fidelity = attempt.fidelity
    if report.bound is not None and attempt.fidelity is not None:
        report.within_bound = report.bound.holds(attempt.fidelity)
    report.measured = attempt.measured
    save_model_atomic(attempt.pruned, out_path)
    report.written = True
    if realizer.config.save_plan is not None:
        from onnxprune.pipeline.plan import make_plan, write_plan

        write_plan(make_plan(Path(report.input_path), realizer.config, calib, report.fingerprint,
                             realizer.candidates, attempt.chosen, out_path),
                   realizer.config.save_plan)
    report.size_after = out_path.stat().st_size
    report.wall_s = time.monotonic() - started
    return report


__all__ = ["prune", "Report", "LayerResult"]
