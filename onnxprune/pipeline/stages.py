"""The stages of a pruning run after the analysis, each a function of what the last returned.

:func:`analyse_file` (the shared analysis, plus the report it starts) → :func:`calibrate` (the
three-way split and the stitched model) → :func:`time_candidates` (the latency table and the
allocation problem; speedup mode only) → :func:`solve` (the per-layer database) → the allocation
(``pipeline/prune.py``: uniform, or the contract loop of ``contract/``) → :func:`finish` (exactness
against masked-dense, the atomic write, the plan). ``prune`` runs them all; ``apply`` runs them
without timing, to replay a plan.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxprune.allocate.budget import AllocationProblem, build_problem, format_unreachable
from onnxprune.allocate.loss import fidelity_scorer
from onnxprune.calib.collect import collect_hessians, poorly_conditioned
from onnxprune.calib.dataset import CalibSet, check_against_model, load_calib_dir, load_calib_reader
from onnxprune.calib.stitch import StitchedRunner
from onnxprune.common.errors import TargetUnreachableError, UserError
from onnxprune.common.runtime import synthetic_feed
from onnxprune.config.settings import PruneConfig
from onnxprune.contract.attempt import Attempt, Progress, Realizer
from onnxprune.contract.verify import check_exact, require_same_graph
from onnxprune.fidelity import FidelityBound, Metric, Scorer, load_metric
from onnxprune.graph.candidates import Candidate
from onnxprune.graph.load import load_model, save_model_atomic
from onnxprune.latency.anchor import bound_cache
from onnxprune.latency.source import MEASURED, TimingSource
from onnxprune.layouts.base import DENSE, LayoutOption, PrunedWeight
from onnxprune.pipeline.analyse import Analysed, analyse
from onnxprune.pipeline.result import LayerResult, Report
from onnxprune.recover.stage import recovery_stage
from onnxprune.solve.database import build_database

logger = logging.getLogger("onnxprune")


LOW_PRECISION_RTOL = 3e-2
"""Exactness tolerance of an fp16/bf16 output against the float32 masked-dense reference: the
half-precision rounding of weights and activations, not a rewrite error (float32: 1e-3)."""


def emit(progress: Progress | None, stage: str, done: int, total: int) -> None:
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


def check_paths(input_path: str | Path, output_path: str | Path) -> tuple[Path, Path]:
    """The input and output paths, refused when they are the same file or OUT is a folder."""
    in_path, out_path = Path(input_path), Path(output_path)
    if in_path.exists() and out_path.exists() and in_path.resolve() == out_path.resolve():
        raise UserError("the output path is the input path; choose another output file")
    if out_path.is_dir():
        raise UserError(f"the output path {out_path} is a directory")
    return in_path, out_path


def analyse_file(in_path: Path, out_path: Path, config: PruneConfig) -> tuple[Analysed, Report]:
    """The shared analysis of the model at ``in_path`` (:func:`~onnxprune.pipeline.analyse.analyse`)
    and the report it starts: what was found, skipped and noted."""
    graph = analyse(load_model(in_path), config, source=str(in_path), require_runnable=True)
    report = Report(str(in_path), None if config.dry_run else str(out_path), graph.mode,
                    config.speedup, graph.runtime.provider, config.threads,
                    graph.bound_shapes.shapes())
    report.notes.extend(graph.notes)
    report.size_before = in_path.stat().st_size
    report.skipped = list(graph.skipped)
    if graph.structures is not None:
        report.structures = [s.to_json() for s in graph.structures.found]
        report.structures_blocked = [{"producer": b.producer, "reason": b.reason}
                                     for b in graph.structures.unstructured]
    return graph, report



def make_realizer(config: PruneConfig, graph: Analysed, data: Calibrated,
                  progress: Progress | None, timing: TimingSource = MEASURED,
                  report: Report | None = None) -> Realizer:
    """The stage that materializes, checks, recovers and measures a choice of every candidate.

    Its search-split scorer (dense outputs computed once) also serves the contract's search."""
    search_scorer = None
    if data.runner is not None and data.search is not None and data.measure is not None \
            and data.search.samples > 0:
        search_scorer = fidelity_scorer(data.runner, data.search, data.measure.metric)
    return Realizer(
        config, graph.model, graph.dense_payload, graph.candidates, graph.runtime, data.feeds,
        _configured_layouts(config), runner=data.runner, fit=data.fit,
        verify_scorer=data.verify_scorer, search_scorer=search_scorer, progress=progress,
        precision=graph.precision,
        timing=timing,
        recovery=recovery_stage(config, data.runner, data.fit, data.search, report),
        bound_measure=data.measure,
    )


def calibrate(graph: Analysed, config: PruneConfig, report: Report,
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


def time_candidates(graph: Analysed, config: PruneConfig, report: Report,
          progress: Progress | None, timing: TimingSource = MEASURED) -> AllocationProblem:
    """The latency table and the allocation problem; refuse a target beyond the bound."""
    problem = build_problem(graph.model, graph.analysis, graph.candidates, graph.options,
                            graph.runtime, config, progress=progress, timing=timing)
    problem.anchor(graph.model, graph.runtime, synthetic_feed(graph.bound_shapes.as_tuples()),
                   progress=lambda done, total: emit(progress, "measuring the Amdahl bound",
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


def solve(graph: Analysed, data: Calibrated, options: Mapping[str, Sequence[LayoutOption]],
           report: Report, progress: Progress | None) -> dict[str, list[PrunedWeight]]:
    """Layer statistics on the fit data (and held-out ones on the search data), then every
    option of every candidate solved once."""
    candidates = graph.candidates
    hessians = heldout = None
    if data.fit is not None and data.runner is not None:
        total = len(data.fit.batches)
        accumulators = collect_hessians(
            data.runner, candidates, data.fit,
            progress=lambda d, t: emit(progress, "collecting statistics", d, t),
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
        emit(progress, "collecting statistics", total, total)
        if data.search is not None and data.calib is not None and \
                data.search.samples < data.calib.samples:
            heldout = {name: acc.H for name, acc in
                       collect_hessians(data.runner, candidates, data.search).items()}
    solved: dict[str, int] = {"n": 0}

    def on_solved(_name: str) -> None:
        solved["n"] += 1
        emit(progress, "solving layer options", solved["n"], len(candidates))

    return build_database(candidates, options, hessians, progress=on_solved, heldout=heldout)


def fill_layers(report: Report, candidates: Sequence[Candidate],
                 chosen: Mapping[str, PrunedWeight], problem: AllocationProblem | None) -> None:
    report.layers = []
    # a coupled group's other consumers: shown with the group's width and their own error and
    # weights (their time is in the deciding consumer's saving, as a producer's is)
    parts = {c.name: (s.option, c) for s in chosen.values() for c in s.companions}
    for cand in candidates:
        solution = chosen[cand.name]
        option, err, kept = solution.option, solution.err, _nonzeros(solution)
        time_after = problem.option_time(cand.name, option) if problem else None
        if cand.name in parts:
            option, companion = parts[cand.name]
            err, kept = companion.err, int(np.count_nonzero(companion.mask))
        report.layers.append(LayerResult(
            name=cand.name, op=cand.op, nodes=cand.node_names, option=option, err=err,
            time_dense_s=problem.option_time(cand.name, DENSE) if problem else None,
            time_after_s=time_after, weights_before=int(cand.weight.size), weights_after=kept,
        ))


def finish(attempt: Attempt, report: Report, realizer: Realizer, calib: CalibSet | None,
            out_path: Path, started: float, problem: AllocationProblem | None = None) -> Report:
    """Check exactness against masked-dense, then write atomically and complete the report."""
    fill_layers(report, realizer.candidates, attempt.chosen, problem)
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
    report.error_feedback = attempt.feedback
    for line in (attempt.feedback_note(), attempt.recovery_note()):
        if line is not None:
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

