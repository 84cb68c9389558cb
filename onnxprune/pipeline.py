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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from onnxprune.allocate.budget import (
    AllocationProblem,
    build_problem,
    format_unreachable,
    granularity,
)
from onnxprune.allocate.dp import solve_dp
from onnxprune.allocate.loss import loss_function, quality_summary
from onnxprune.allocate.search import spdy_search
from onnxprune.calib import CalibSet, check_against_model, load_calib_dir, load_calib_reader
from onnxprune.config import PruneConfig
from onnxprune.errors import TargetUnreachableError, UserError
from onnxprune.graph.candidates import Candidate, GraphAnalysis, SkippedNode, ensure_node_names
from onnxprune.graph.candidates import find_candidates as _find_candidates
from onnxprune.graph.load import load_model, save_model_atomic, stamp_ir_version
from onnxprune.graph.shapes import bind_input_shapes
from onnxprune.latency.measure import PairResult
from onnxprune.layouts.base import DENSE, LayoutOption, PrunedWeight, is_fast_on
from onnxprune.layouts.registry import (
    LAYOUTS,
    candidate_options,
    get_layout,
    layouts_fast_on,
)
from onnxprune.materialize import materialize
from onnxprune.reconstruct.collect import collect_hessians, poorly_conditioned
from onnxprune.reconstruct.database import build_database
from onnxprune.reconstruct.sequential import sequential_resolve
from onnxprune.reconstruct.stitch import StitchedRunner
from onnxprune.runtime import RuntimeConfig, resolve_provider, synthetic_feed
from onnxprune.verify import check_exact, measure_speedup

logger = logging.getLogger("onnxprune")

AIM_MARGIN = 1.03
"""The allocation aims this much above the target; verification still requires the target."""
RETRY_MARGIN = 1.01
"""Margin of the tightening rounds, on top of the measured prediction bias."""
MAX_GOAL_STEP = 1.15
"""A tightening round raises the allocation's goal by at most this factor."""

Progress = Callable[[str, int, int], None]
"""(stage description, done, total): the CLI shows it as a progress bar."""


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
    """Everything the terminal summary and the JSON report show."""

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
    measured: PairResult | None = None
    rounds: list[dict] = field(default_factory=list)
    calibration: dict | None = None
    search: dict | None = None
    quality: dict | None = None
    exactness: float | None = None
    size_before: int = 0
    size_after: int = 0
    fingerprint: str | None = None
    wall_s: float = 0.0
    written: bool = False
    met_target: bool | None = None


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
    skipped: list[SkippedNode],
) -> dict[str, list[LayoutOption]]:
    """Options per candidate (dense first); in the uniform modes, the one option nearest the
    requested level or pattern, and candidates with none move to ``skipped`` with the reason."""
    if config.speedup is not None:
        return {c.name: candidate_options(c, layouts, config.levels) for c in candidates}
    levels = [1.0 - config.nm[0] / config.nm[1]] if config.nm is not None else [config.sparsity]
    options: dict[str, list[LayoutOption]] = {}
    for cand in candidates:
        found: list[LayoutOption] = []
        reasons = []
        for name in layouts:
            opts, reason = get_layout(name).options(cand, levels)
            if config.nm is not None:
                opts = [o for o in opts if dict(o.params).get("n") == config.nm[0]
                        and dict(o.params).get("m") == config.nm[1]]
                if not opts and reason is None:
                    reason = f"{config.nm[0]}:{config.nm[1]} does not fit its weight"
            if config.sparsity is not None and opts:
                # Nearest level; among equal levels the coarsest block, usually the fastest.
                opts = [min(opts, key=lambda o: (round(abs(o.level - config.sparsity), 6),
                                                 -granularity(o)))]
            found.extend(opts)
            if reason:
                reasons.append(f"{name}: {reason}")
        if not found:
            skipped.append(SkippedNode(cand.sites[0].node, cand.op,
                                       "; ".join(reasons) or "no option fits", cand.macs))
            continue
        options[cand.name] = [DENSE, *found]
    return options


def _configured_layouts(config: PruneConfig) -> dict:
    """Layout objects whose behaviour the config changes (the rest come from the registry)."""
    from onnxprune.layouts.unstructured import Unstructured

    return {"unstructured": Unstructured(sparse_storage=config.sparse_storage)}


def _nonzeros(solution: PrunedWeight) -> int:
    return int(np.count_nonzero(solution.mask))


def prune(
    input_path: str | Path,
    output_path: str | Path,
    config: PruneConfig,
    progress: Progress | None = None,
) -> Report:
    """Prune ``input_path`` and write ``output_path``; see :class:`PruneConfig` for the options.

    Returns:
        The report (also when ``config.dry_run``: then nothing is written).

    Raises:
        UserError: bad input or options (exit code 2).
        TargetUnreachableError: the speedup cannot be met (exit code 3); nothing is written unless
            ``config.best_effort``.
    """
    started = time.monotonic()
    in_path, out_path = Path(input_path), Path(output_path)
    if in_path.resolve() == out_path.resolve():
        raise UserError("the output path is the input path; choose another output file")
    if out_path.is_dir():
        raise UserError(f"the output path {out_path} is a directory")
    # Stamped once with an IR version the installed ORT reads: every session below uses it.
    model = stamp_ir_version(ensure_node_names(load_model(in_path)))
    dense_payload = model.SerializeToString()
    bound = bind_input_shapes(model, config.shapes)
    provider = resolve_provider(config.provider)
    runtime = RuntimeConfig(provider=provider, threads=config.threads)
    layouts = _allowed_layouts(config, provider)
    mode = "speedup" if config.speedup is not None else ("nm" if config.nm else "sparsity")
    report = Report(str(in_path), None if config.dry_run else str(out_path), mode,
                    config.speedup, provider, config.threads, bound.shapes())
    report.notes.extend(bound.notes)
    report.size_before = in_path.stat().st_size

    analysis = _find_candidates(model, bound)
    candidates, skipped = _select(analysis, config.exclude)
    report.skipped = skipped
    calib = _load_calibration(config, model)
    if calib is None:
        report.notes.append(
            "no calibration data: weights are chosen by magnitude and not reconstructed, so "
            "accuracy will suffer; pass --calib DIR"
        )
        logger.warning("no calibration data (--calib): using the data-free magnitude proxy; "
                       "accuracy will suffer")
    if not candidates:
        raise _nothing_to_prune(analysis, mode)
    options = _options_for(candidates, layouts, config, report.skipped)
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

    feed = synthetic_feed(bound.as_tuples(), seed=config.seed)
    runner, fit, holdout = None, None, None
    if calib is not None:
        fit, holdout = calib.split(0.25)
        runner = StitchedRunner(model, candidates,
                                expose=[s.activation for c in candidates for s in c.sites])
        report.calibration = {"source": calib.source, "samples": calib.samples,
                              "batches": len(calib.batches), "labels": calib.has_labels}

    problem: AllocationProblem | None = None
    if mode == "speedup":
        problem = build_problem(model, analysis, candidates, options, runtime, config,
                                progress=progress)
        report.amdahl_bound = problem.amdahl_bound
        report.fingerprint = problem.fingerprint
        options = problem.options
        if config.speedup > problem.amdahl_bound and not config.best_effort:
            raise TargetUnreachableError(format_unreachable(problem, config.speedup))

    hessians = None
    if calib is not None:
        total = len(calib.batches)
        accumulators = collect_hessians(
            runner, candidates, calib,
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
    solved: dict[str, int] = {"n": 0}

    def on_solved(_name: str) -> None:
        solved["n"] += 1
        _emit(progress, "solving layer options", solved["n"], len(candidates))

    database = build_database(candidates, options, hessians, progress=on_solved)

    if mode != "speedup":
        chosen = {c.name: database[c.name][-1] for c in candidates}
        return _finish(model, dense_payload, candidates, chosen, report, config, runtime, feed,
                       calib, runner, out_path, started, progress, problem=None)

    assert problem is not None
    score = None
    if calib is not None and holdout is not None:
        score = loss_function(runner, holdout, candidates, database)
    target = config.speedup
    best: tuple[float, dict, onnx.ModelProto, PairResult | None] | None = None
    # Aim a little above the target: a model that only just meets it in the verification run
    # falls short in about half of a user's later measurements (run-to-run noise is a few %).
    ceiling = problem.amdahl_bound * 0.999
    goal = min(target * AIM_MARGIN, max(ceiling, target))
    if config.best_effort and goal > ceiling:
        goal = ceiling  # the target is beyond the bound: aim for the fastest reachable model
    coefs = None
    layers = problem.layer_choices(database)
    for round_index in range(max(1, config.verify_rounds + 1)):
        budget = problem.budget_for(goal)
        choice = None
        if score is not None and config.search_budget > 0:
            # The first round searches in full; tightening rounds refine the coefficients found.
            result = spdy_search(
                layers, budget, score,
                seconds=config.search_budget if coefs is None else config.search_budget / 4,
                seed=config.seed + round_index, initial_coefs=coefs,
                max_evaluations=config.search_evaluations or 400,
                progress=lambda n, loss: _emit(progress, "searching sensitivities", n, 0),
            )
            if result is not None:
                choice, coefs = result.choice, result.coefs
                report.search = {"evaluations": result.evaluations,
                                 "loss_plain_dp": result.initial_loss, "loss": result.loss}
        else:
            choice = solve_dp(layers, budget)
        if choice is None:
            if best is not None:
                break
            raise TargetUnreachableError(format_unreachable(problem, target))
        chosen = {c.name: database[c.name][j] for c, j in zip(candidates, choice, strict=True)}
        predicted = problem.predicted_speedup(chosen)
        if config.dry_run:
            report.predicted_speedup = predicted
            _fill_layers(report, candidates, chosen, problem)
            report.wall_s = time.monotonic() - started
            return report
        if runner is not None and fit is not None and config.sequential:
            chosen = sequential_resolve(runner, model, candidates, chosen, fit)
        pruned = materialize(model, candidates, chosen, _configured_layouts(config))
        _emit(progress, "measuring speedup", 0, 1)
        measured = measure_speedup(dense_payload, pruned, feed, runtime)
        if measured.speedup_median < target:
            # One measurement can be a burst of outside load: measure again before tightening,
            # and judge by the mean of both (never by the better one alone).
            again = measure_speedup(dense_payload, pruned, feed, runtime)
            measured = replace(
                measured, speedup_median=(measured.speedup_median + again.speedup_median) / 2,
                pairs=measured.pairs + again.pairs,
            )
        _emit(progress, "measuring speedup", 1, 1)
        report.rounds.append({"round": round_index + 1, "goal": goal, "predicted": predicted,
                              "measured": measured.speedup_median,
                              "budget_s": budget})
        logger.info("round %d: predicted %.2fx, measured %.2fx (target %.2fx)", round_index + 1,
                    predicted, measured.speedup_median, target)
        if best is None or measured.speedup_median > best[3].speedup_median:
            best = (predicted, chosen, pruned, measured)
        if measured.speedup_median >= target:
            break
        # Correct the prediction by its measured bias and allocate again. (Compounding goals
        # instead overshoots: near the bound a few % more speed costs most of the accuracy.)
        bias = predicted / max(measured.speedup_median, 1e-6)
        new_goal = min(target * bias * RETRY_MARGIN, goal * MAX_GOAL_STEP,
                       problem.amdahl_bound * 0.999)
        if new_goal <= goal * 1.001:
            new_goal = min(goal * 1.02, problem.amdahl_bound * 0.999)
        if new_goal <= goal:
            break
        goal = new_goal
    assert best is not None
    predicted, chosen, pruned, measured = best
    report.predicted_speedup = predicted
    report.measured = measured
    report.met_target = measured.speedup_median >= target
    if not report.met_target and not config.best_effort:
        _fill_layers(report, candidates, chosen, problem)
        raise TargetUnreachableError(
            f"measured {measured.speedup_median:.2f}x after {len(report.rounds)} round(s), short "
            f"of the {target:g}x target (predicted {predicted:.2f}x, bound "
            f"{problem.amdahl_bound:.2f}x); nothing written. Use --best-effort to write the "
            "fastest model found, or a lower --speedup"
        )
    return _finish(model, dense_payload, candidates, chosen, report, config, runtime, feed,
                   calib, runner, out_path, started, progress, problem=problem, pruned=pruned,
                   measured=measured)


def _select(analysis: GraphAnalysis, exclude: str | None) -> tuple[list[Candidate],
                                                                   list[SkippedNode]]:
    skipped = list(analysis.skipped)
    if not exclude:
        return list(analysis.candidates), skipped
    pattern = re.compile(exclude)
    kept = []
    for cand in analysis.candidates:
        if any(pattern.search(name) for name in cand.node_names):
            skipped.append(SkippedNode(cand.name, cand.op, "excluded by --exclude", cand.macs))
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


def _finish(
    model: onnx.ModelProto, dense_payload: bytes, candidates: Sequence[Candidate],
    chosen: dict[str, PrunedWeight], report: Report, config: PruneConfig,
    runtime: RuntimeConfig, feed: Mapping[str, np.ndarray], calib: CalibSet | None,
    runner: StitchedRunner | None, out_path: Path, started: float, progress: Progress | None,
    *, problem: AllocationProblem | None, pruned: onnx.ModelProto | None = None,
    measured: PairResult | None = None,
) -> Report:
    """Sequential re-solve (uniform modes), materialize, check, measure, write."""
    if pruned is None:
        if runner is not None and calib is not None and config.sequential:
            chosen = sequential_resolve(runner, model, candidates, chosen, calib)
        if config.dry_run:
            _fill_layers(report, candidates, chosen, problem)
            report.wall_s = time.monotonic() - started
            return report
        pruned = materialize(model, candidates, chosen, _configured_layouts(config))
    _fill_layers(report, candidates, chosen, problem)
    if all(layer.option.layout == "dense" for layer in report.layers):
        report.notes.append("every node stayed dense: nothing was pruned")
    reference = runner or StitchedRunner(model, candidates)
    weights = {name: s.weight for name, s in chosen.items()}
    check_feed = calib.batches[0] if calib is not None else feed
    report.exactness = check_exact(pruned, reference, weights, check_feed)
    report.quality = quality_summary(reference, weights, calib) if calib is not None else None
    if measured is None:
        _emit(progress, "measuring speedup", 0, 1)
        measured = measure_speedup(dense_payload, pruned, feed, runtime)
        _emit(progress, "measuring speedup", 1, 1)
    report.measured = measured
    save_model_atomic(pruned, out_path)
    report.written = True
    report.size_after = out_path.stat().st_size
    report.wall_s = time.monotonic() - started
    return report


__all__ = ["prune", "Report", "LayerResult"]
