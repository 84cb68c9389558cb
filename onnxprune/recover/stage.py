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

from onnxprune.calib import CalibSet
from onnxprune.fidelity.channels import probability_outputs
from onnxprune.reconstruct.stitch import StitchedRunner
from onnxprune.recover.tune import Recovery, Targets, recover_globally

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
