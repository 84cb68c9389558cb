"""The pruning run: the stages in order, and the promise about ``OUT``.

:func:`prune` is the whole library API. The analysis is ``pipeline/analyse.py`` (shared with
apply, profile and inspect), the later stages are ``pipeline/stages.py``, and the allocation is
either uniform (``--sparsity``/``--nm``) or the contract loop (``contract/rounds.py``). This
module only wires them, decides what a user mistake is, and keeps the promise that ``OUT`` is
written only after the model has been checked (valid, exact against masked-dense, and — with a
target — measured to meet it), atomically.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from onnxprune.allocate.budget import AllocationProblem, format_unreachable
from onnxprune.calib.dataset import CalibSet
from onnxprune.common.errors import TargetUnreachableError, UserError
from onnxprune.config.settings import PruneConfig
from onnxprune.contract.attempt import Progress, Realizer
from onnxprune.contract.rounds import run_contract
from onnxprune.fidelity import describe
from onnxprune.graph.candidates import Candidate
from onnxprune.latency.source import MEASURED, TimingSource
from onnxprune.layouts.base import PrunedWeight
from onnxprune.pipeline.analyse import Analysed
from onnxprune.pipeline.result import LayerResult, Report
from onnxprune.pipeline.stages import (
    Calibrated,
    analyse_file,
    calibrate,
    check_paths,
    fill_layers,
    finish,
    make_realizer,
    solve,
    time_candidates,
)

logger = logging.getLogger("onnxprune")


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
    in_path, out_path = check_paths(input_path, output_path)
    if config.max_accuracy_drop is not None and config.calib_dir is None \
            and config.calib_reader is None and calibration is None:
        raise UserError("--max-accuracy-drop needs labelled calibration data (--calib)")
    graph, report = analyse_file(in_path, out_path, config)
    data = calibrate(graph, config, report, calibration)
    problem = (time_candidates(graph, config, report, progress, timing)
               if graph.mode == "speedup" else None)
    options = problem.options if problem is not None else graph.options
    database = solve(graph, data, options, report, progress)
    realizer = make_realizer(config, graph, data, progress, timing, report)
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
            fill_layers(report, candidates, attempt.chosen, None)
            raise TargetUnreachableError(
                f"the pruned model breaks the fidelity bound on held-out calibration "
                f"samples: {'; '.join(bound.violations(attempt.fidelity))} "
                f"({describe(attempt.fidelity)}); nothing written. Prune less, loosen "
                "the bound, or pass --best-effort to write it anyway", report
            )
    return finish(realizer.measure(attempt), report, realizer, data.calib, out_path, started)


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
    result = run_contract(config, problem, candidates, database, realizer, bound=bound,
                          search_fidelity=realizer.search_scorer, measure=data.measure,
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
            fill_layers(report, candidates, result.attempt.chosen, problem)
        message = result.message or format_unreachable(problem, config.speedup)
        if slower and config.best_effort:
            message = (f"{message.split('; nothing written')[0]}; --best-effort wrote nothing: "
                       f"the fastest model found measured {result.attempt.measured.speedup:.2f}x, "
                       "slower than the input")
        raise TargetUnreachableError(message)
    attempt = result.attempt
    report.predicted_speedup = attempt.predicted
    report.met_target = result.met
    return finish(attempt, report, realizer, calib, out_path, started, problem)


def _dry(report: Report, candidates: Sequence[Candidate], chosen: Mapping[str, PrunedWeight],
         problem: AllocationProblem | None, started: float) -> Report:
    if problem is not None:
        report.predicted_speedup = problem.predicted_speedup(chosen)
    fill_layers(report, candidates, chosen, problem)
    report.wall_s = time.monotonic() - started
    return report



__all__ = ["prune", "Report", "LayerResult"]
