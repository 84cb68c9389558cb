"""One candidate output model: realized from an allocation, checked for fidelity, timed.

The pipeline and the contract loop (:mod:`onnxprune.contract.rounds`) both turn allocations into
models the same way: re-solve the chosen options sequentially on the fit data, materialize the
graph, measure fidelity on the held-out verify data, and — when it is worth it — time it against the
dense model in fresh sessions. :class:`Realizer` holds what that needs so no stage re-derives it."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from onnxprune.allocate.loss import FidelityScorer
from onnxprune.calib.dataset import CalibSet
from onnxprune.calib.stitch import StitchedRunner
from onnxprune.common.progress import Progress
from onnxprune.common.runtime import RuntimeConfig
from onnxprune.config.settings import PruneConfig
from onnxprune.fidelity import Fidelity, FidelityBound, describe
from onnxprune.graph.candidates import Candidate
from onnxprune.graph.precision import LowPrecision, lower
from onnxprune.latency.measure import SpeedResult
from onnxprune.latency.source import MEASURED, TimingSource
from onnxprune.layouts.base import Layout, PrunedWeight, solution_weights
from onnxprune.layouts.materialize import materialize
from onnxprune.recover.stage import RecoveryStage
from onnxprune.solve.sequential import sequential_resolve

logger = logging.getLogger("onnxprune")



@dataclass(frozen=True)
class Attempt:
    """A materialized candidate output and what is known about it.

    Attributes:
        chosen: the solution per candidate name (after the sequential re-solve).
        pruned: the materialized model.
        goal: the speedup the allocation aimed at (None in the uniform modes).
        predicted: the latency table's predicted speedup (None in the uniform modes).
        fidelity: agreement with the dense model on the verify data (None: no calibration data).
        measured: the speed measured in fresh sessions (None: not timed).
        oneshot: when global recovery's model was kept, the one-shot model it was tuned from
            (same graph, other initializer values; the masked-dense exactness is checked on it).
        oneshot_fidelity: the one-shot model's fidelity on the verify data, when recovery ran.
        recovery: what global recovery did (:meth:`Recovery.to_json` plus ``kept``), or None.
        feedback: whether the error-feedback re-solve was kept, with the search-split loss of
            both re-solves (None: not compared).
    """

    chosen: Mapping[str, PrunedWeight]
    pruned: onnx.ModelProto
    goal: float | None = None
    predicted: float | None = None
    fidelity: Fidelity | None = None
    measured: SpeedResult | None = None
    oneshot: onnx.ModelProto | None = None
    oneshot_fidelity: Fidelity | None = None
    recovery: dict | None = None
    feedback: dict | None = None

    @property
    def weights(self) -> dict[str, np.ndarray]:
        return solution_weights(self.chosen)

    def recovery_note(self) -> str | None:
        """One line of what global recovery did to this model (None: it did not run)."""
        if self.recovery is None:
            return None
        line = self.recovery["note"]
        if self.recovery.get("kept") and self.oneshot_fidelity is not None \
                and self.fidelity is not None:
            line += (f"; on held-out samples: {describe(self.oneshot_fidelity)} (one-shot) -> "
                     f"{describe(self.fidelity)}")
        return line

    def feedback_note(self) -> str | None:
        """One line of which sequential re-solve this model kept (None: not compared)."""
        if self.feedback is None:
            return None
        with_, without = self.feedback["loss_search_feedback"], self.feedback["loss_search_plain"]
        if self.feedback["kept"]:
            return (f"error feedback kept: search-split loss {with_:.4g} with it, {without:.4g} "
                    "without")
        return (f"error feedback not kept: search-split loss {with_:.4g} with it, {without:.4g} "
                "without (each layer fitted to the dense output scored worse downstream)")


@dataclass(frozen=True)
class Realizer:
    """Turns allocations into :class:`Attempt` s (see the module docstring)."""

    config: PruneConfig
    model: onnx.ModelProto
    dense_payload: bytes
    candidates: Sequence[Candidate]
    runtime: RuntimeConfig
    timing_feeds: Mapping[str, Mapping[str, np.ndarray]]
    layouts: Mapping[str, Layout]
    runner: StitchedRunner | None = None
    fit: CalibSet | None = None
    verify_scorer: FidelityScorer | None = None
    search_scorer: FidelityScorer | None = None
    progress: Progress | None = None
    precision: LowPrecision | None = None
    timing: TimingSource = MEASURED
    recovery: RecoveryStage | None = None
    bound_measure: FidelityBound | None = None

    def realize(self, chosen: Mapping[str, PrunedWeight], goal: float | None = None,
                predicted: float | None = None) -> Attempt:
        """Sequential re-solve (with calibration data), materialize, fidelity on verify data,
        then global recovery, whose model is kept only when the verify data says it is better."""
        chosen, feedback = dict(chosen), None
        if self.runner is not None and self.fit is not None and self.config.sequential:
            chosen, feedback = self._resolve(chosen)
        pruned = materialize(self.model, self.candidates, chosen, self.layouts)
        fidelity = None
        if self.verify_scorer is not None:
            fidelity = self.verify_scorer(solution_weights(chosen))
        attempt = Attempt(chosen, pruned, goal, predicted, fidelity, feedback=feedback)
        if self.recovery is not None and fidelity is not None and any(
                s.option.layout != "dense" for s in chosen.values()):
            attempt = self._recover(attempt)
        if self.precision is not None:
            attempt = replace(attempt, pruned=lower(attempt.pruned, self.precision))
        return attempt

    def _resolve(self, chosen: dict[str, PrunedWeight]
                 ) -> tuple[dict[str, PrunedWeight], dict | None]:
        """The sequential re-solve; with error feedback, the search split decides whether to keep
        it over the plain one.

        Error feedback fits each layer to the dense model's output of that layer, which is the
        best *local* fit by construction, but not always the better model: on the MNIST CNN at
        3x it halves the output error, on MiniLM-L6 at 2x it lowers the sentence cosine (a least-
        squares fit on perturbed inputs shrinks each layer's output toward its mean, and a deep
        residual network amplifies that). So both are solved and scored on the search split —
        data neither the statistics nor the verify check see — and the better one is kept.
        """
        assert self.runner is not None and self.fit is not None
        plain = sequential_resolve(self.runner, self.model, self.candidates, chosen, self.fit)
        if not self.config.error_feedback:
            return plain, None
        fed = sequential_resolve(self.runner, self.model, self.candidates, chosen, self.fit,
                                 feedback=True)
        if self.search_scorer is None:
            return fed, None
        measure = self.bound_measure or FidelityBound()
        loss_fed = measure.loss(self.search_scorer(solution_weights(fed)))
        loss_plain = measure.loss(self.search_scorer(solution_weights(plain)))
        kept = loss_fed <= loss_plain
        record = {"kept": kept, "loss_search_feedback": loss_fed, "loss_search_plain": loss_plain}
        return (fed if kept else plain), record

    def _recover(self, attempt: Attempt) -> Attempt:
        """Global recovery of ``attempt``'s model; the tuned one replaces it when better."""
        assert self.recovery is not None and self.verify_scorer is not None
        assert attempt.fidelity is not None
        result = self.recovery.run(attempt.pruned, self.progress)
        record = {**result.to_json(), "kept": False}
        if result.model is None:
            return replace(attempt, recovery=record, oneshot_fidelity=attempt.fidelity)
        tuned = self.verify_scorer.of_model(result.model)
        measure = self.bound_measure or FidelityBound()
        record.update(loss_verify_oneshot=measure.loss(attempt.fidelity),
                      loss_verify_recovered=measure.loss(tuned))
        if measure.loss(tuned) >= measure.loss(attempt.fidelity):
            record["note"] += "; not kept: no better on the verify data than the one-shot model"
            return replace(attempt, recovery=record, oneshot_fidelity=attempt.fidelity)
        record["kept"] = True
        return replace(attempt, pruned=result.model, fidelity=tuned, oneshot=attempt.pruned,
                       oneshot_fidelity=attempt.fidelity, recovery=record)

    def measure(self, attempt: Attempt, target: float | None = None) -> Attempt:
        """Time ``attempt`` against the dense model in fresh session pairs.

        With ``target``: when the median over sessions meets it and the lower quartile does not
        (one or two sessions ran in a slow phase of the machine), as many sessions again are
        measured and the target is judged on all of them, so one slow session neither passes
        nor fails a model on its own.
        """
        payload = attempt.pruned.SerializeToString()  # once, for both measurements
        attempt = self._measure(attempt, payload)
        measured = attempt.measured
        assert measured is not None
        if target is not None and measured.speedup >= target > measured.speedup_low:
            more = self._measure(attempt, payload).measured
            assert more is not None
            attempt = replace(attempt, measured=measured.merged(more))
        return attempt

    def _measure(self, attempt: Attempt, payload: bytes) -> Attempt:
        if self.progress:
            self.progress("measuring speedup", 0, self.config.verify_sessions)
        measured = self.timing.speed(
            self.dense_payload, payload, self.timing_feeds, self.runtime,
            sessions=self.config.verify_sessions, seconds=self.config.verify_seconds,
            chosen=attempt.chosen, predicted=attempt.predicted,
        )
        if self.progress:
            self.progress("measuring speedup", self.config.verify_sessions,
                          self.config.verify_sessions)
        return replace(attempt, measured=measured)
