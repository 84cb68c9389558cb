"""``onnxprune apply``: re-materialize a saved plan, byte-identically and without timing.

Everything after the allocation is a pure function of the input model, the calibration data, the
settings that decide the candidates and the chosen options: the statistics, the (sequential) OBS
reconstruction, the rewrite and the serialization. So applying a plan runs the pipeline's own
stages (``pipeline/stages.py``) — analyse, calibrate, solve only the chosen options, realize,
check exactness, write — and skips the latency table, the search and the speed measurement. The
digests in the plan guard the promise: a different input model or calibration set is refused
(exit 2), and a reconstruction that picks different masks is reported as the internal error it
would be.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from onnxprune.common.errors import UserError
from onnxprune.contract.attempt import Progress
from onnxprune.pipeline.plan import calibration_digest, mask_digest, model_digest, read_plan

logger = logging.getLogger("onnxprune")


class PlanMismatchError(RuntimeError):
    """The re-solved masks differ from the plan's (non-deterministic reconstruction: a bug)."""


def apply_plan(input_path: str | Path, output_path: str | Path, plan_path: str | Path,
               calib_dir: Path | None = None, calib_reader: str | None = None,
               progress: Progress | None = None):
    """Write the model ``plan_path`` describes for ``input_path`` to ``output_path``.

    Returns:
        The pipeline's :class:`~onnxprune.pipeline.result.Report` (mode "apply"; nothing is timed).

    Raises:
        UserError: the plan is unreadable, or the input model or calibration data differ from the
            ones the plan was made with (the message says which).
    """
    from onnxprune.pipeline.stages import (
        analyse_file,
        calibrate,
        check_paths,
        finish,
        make_realizer,
        solve,
    )

    started = time.monotonic()
    in_path, out_path = check_paths(input_path, output_path)
    if not in_path.is_file():
        raise UserError(f"no such file: {in_path}")
    plan = read_plan(plan_path)
    digest = model_digest(in_path)
    if digest != plan.input_sha256:
        raise UserError(
            f"the input model {in_path} is not the one the plan {plan_path} was made for "
            f"(sha256 {digest[:12]}…, the plan's {plan.input_sha256[:12]}…)")
    if plan.calibration_sha256 is not None and calib_dir is None and calib_reader is None:
        raise UserError(f"the plan {plan_path} was made with calibration data "
                        f"({plan.calibration_samples} samples): pass the same --calib")
    config = plan.prune_config(calib_dir, calib_reader)
    graph, report = analyse_file(in_path, out_path, config)
    report.mode = "apply"
    report.target_speedup = None
    names = {c.name for c in graph.candidates}
    if names != set(plan.choices):
        raise UserError(f"the plan {plan_path} does not match the candidates found in {in_path} "
                        f"(missing: {sorted(names - set(plan.choices))[:3]}, unknown: "
                        f"{sorted(set(plan.choices) - names)[:3]})")
    data = calibrate(graph, config, report)
    found = calibration_digest(data.calib)
    if found != plan.calibration_sha256:
        what = "no calibration data" if data.calib is None else \
            f"calibration data {data.calib.source} ({data.calib.samples} samples, sha256 " \
            f"{found[:12]}…)"
        planned = "none" if plan.calibration_sha256 is None else \
            f"{plan.calibration_samples} samples, sha256 {plan.calibration_sha256[:12]}…"
        raise UserError(f"{what} is not what the plan {plan_path} was made with ({planned})")
    options = {name: [choice.option] for name, choice in plan.choices.items()}
    database = solve(graph, data, options, report, progress)
    chosen = {name: solutions[0] for name, solutions in database.items()}
    # A plan is made with global recovery off (time-budgeted, so not reproducible).
    realizer = make_realizer(dataclasses.replace(config, recover=False), graph, data, progress)
    attempt = realizer.realize(chosen)
    for name, solution in attempt.chosen.items():
        if mask_digest(solution.mask) != plan.choices[name].mask_sha256:
            raise PlanMismatchError(
                f"{name}: the re-solved mask differs from the plan's; the reconstruction is not "
                "deterministic on this machine (please report it)")
    report.notes.append(f"applied the plan {plan_path} (nothing timed)")
    return finish(attempt, report, realizer, data.calib, out_path, started)

