"""Global recovery as a pipeline stage: what it needs from the run, and its time budget.

:class:`RecoveryStage` is built once per run (when calibration data is given and recovery is
on); each realized allocation is handed to :meth:`RecoveryStage.run`. The dense model's outputs
on the fit and search parts, which every recovery tunes toward, are computed on first use and
kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

from onnxprune.calib.dataset import CalibSet
from onnxprune.calib.stitch import StitchedRunner
from onnxprune.config.settings import PruneConfig
from onnxprune.fidelity.channels import probability_outputs
from onnxprune.recover.tune import (
    INSTALL_HINT,
    Recovery,
    Targets,
    recover_globally,
    torch_available,
)

logger = logging.getLogger("onnxprune")

AUTO_STEPS = 400
"""Without ``--recover-seconds``, recovery stops after this many optimizer steps ..."""
AUTO_MAX_S = 120.0
"""... or this many seconds (it runs once per realized allocation, and a run realizes 2-6)."""


@dataclass
class RecoveryStage:
    """Tunes realized models toward the dense one (see :mod:`onnxprune.recover.tune`).

    Args:
        runner: the stitched runner (its dense weights give the dense outputs).
        fit: the batches tuned on; held_out: the batches that pick the best state (the search
            part: the verify part stays unseen by every choice).
        seconds: the budget per realization; None: :data:`AUTO_STEPS` steps, at most
            :data:`AUTO_MAX_S` seconds.
        threads: torch threads.
    """

    runner: StitchedRunner
    fit: CalibSet
    held_out: CalibSet
    seconds: float | None = None
    threads: int | None = None
    seed: int = 0
    _targets: tuple[Targets, Targets] | None = field(default=None, init=False, repr=False)

    def targets(self) -> tuple[Targets, Targets]:
        if self._targets is None:
            self._targets = (Targets.of(self.fit, self.runner.run),
                             Targets.of(self.held_out, self.runner.run))
        return self._targets

    def run(self, model: onnx.ModelProto,
            progress: Callable[[str, int, int], None] | None = None) -> Recovery:
        fit, held_out = self.targets()
        seconds = self.seconds if self.seconds is not None else AUTO_MAX_S
        steps = None if self.seconds is not None else AUTO_STEPS
        stage = "global recovery"

        def report(spent: float, loss: float) -> None:
            if progress:
                progress(f"{stage} · held-out loss {loss:.4g}", int(spent), int(seconds))

        result = recover_globally(model, fit, held_out, probability_outputs(model.graph),
                                  seconds, threads=self.threads, progress=report, seed=self.seed,
                                  max_steps=steps)
        if progress:
            progress(stage, int(seconds), int(seconds))
        logger.info(result.note)
        return result


def recovery_stage(config: PruneConfig, runner: StitchedRunner | None, fit: CalibSet | None,
                   held_out: CalibSet | None, report=None) -> RecoveryStage | None:
    """The run's recovery stage, when it is on, calibration data is given and torch is
    installed; otherwise None, with a line in ``report.notes`` saying why when it matters."""
    if not config.recover or runner is None or fit is None or held_out is None:
        return None
    if config.save_plan is not None:
        if report is not None:
            report.notes.append("global recovery off: --save-plan promises a byte-identical "
                                "replay, and recovery is time-budgeted (not reproducible)")
        return None
    if not torch_available():
        if report is not None:
            report.notes.append(f"global recovery not available: torch is not installed; "
                                f"{INSTALL_HINT}, or pass --no-recover to silence this")
        return None
    return RecoveryStage(runner, fit, held_out, config.recover_seconds, config.threads,
                         config.seed)
