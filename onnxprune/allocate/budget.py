"""The allocation problem in seconds: options worth timing, the budget, the Amdahl bound.

Built from the latency table: the measured whole-model time ``T_dense``, the fixed part
``T_base`` (everything pruning cannot change), and the time of every (candidate, option). For a
target speedup S the prunable budget is ``T_dense / S − T_base``. Options that are not faster
than dense on the EP are dropped before anything is solved, and so are options dominated by one
that is at least as fast, removes no more weights and has blocks no coarser — they can never be
the DP's best choice, and solving them would only cost time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.allocate.dp import LayerChoices
from onnxprune.common.runtime import RuntimeConfig
from onnxprune.config.settings import PruneConfig
from onnxprune.graph.candidates import Candidate, GraphAnalysis
from onnxprune.latency.anchor import (
    BOUND_MAX_ROUNDS,
    BOUND_MAX_SECONDS,
    BOUND_SECONDS,
    BOUND_SESSIONS,
    FASTEST_TIE,
    MeasuredBound,
    measure_bound,
    saving_scale_for,
)
from onnxprune.latency.cache import TimingCache
from onnxprune.latency.source import MEASURED, TimingSource
from onnxprune.latency.table import LatencyTable
from onnxprune.layouts.base import DENSE, LayoutOption, PrunedWeight
from onnxprune.layouts.registry import LAYOUTS, option_label

logger = logging.getLogger("onnxprune")


def granularity(option: LayoutOption) -> int:
    """Entries that are kept or removed together, in the option's layout's own terms."""
    layout = LAYOUTS.get(option.layout)
    return layout.granularity(option) if layout is not None else 1


def prune_dominated(
    options: Sequence[LayoutOption], times: Mapping[LayoutOption, float]
) -> list[LayoutOption]:
    """Dense, plus the options faster than dense that no other option dominates."""
    dense_time = times[DENSE]
    useful = [o for o in options if o.layout != "dense" and times[o] < dense_time]
    kept = []
    for option in useful:
        dominated = any(
            other is not option
            and times[other] <= times[option]
            and other.level <= option.level
            and granularity(other) <= granularity(option)
            and (times[other], other.level, granularity(other))
            != (times[option], option.level, granularity(option))
            for other in useful
        )
        if not dominated:
            kept.append(option)
    return [DENSE, *kept]


@dataclass
class AllocationProblem:
    """Times and options per candidate, in the order the DP sees them."""

    candidates: Sequence[Candidate]
    options: dict[str, list[LayoutOption]]
    table: LatencyTable
    total_s: float
    base_s: float
    fingerprint: str
    saving_scale: float = 1.0
    """Factor on every option's predicted saving over dense (1: the table as measured);
    :meth:`anchor` sets it so the all-fastest prediction equals the measured bound."""
    measured_bound: MeasuredBound | None = None

    def option_time(self, name: str, option: LayoutOption, scale: float | None = None) -> float:
        """Predicted in-graph seconds of ``option``: dense minus the saving, scaled by
        ``scale`` (default: :attr:`saving_scale`)."""
        scale = self.saving_scale if scale is None else scale
        time = self.table.option_time(name, option)
        if scale == 1.0 or option == DENSE:
            return time
        dense = self.table.option_time(name, DENSE)
        return dense - scale * (dense - time)

    @property
    def amdahl_bound(self) -> float:
        """Best reachable speedup: every candidate at its fastest option (chains corrected).

        Once anchored (:meth:`anchor`), this is the measured speedup of the all-fastest model.
        """
        return self.speedup_of(self.fastest_options())

    @property
    def predicted_bound(self) -> float:
        """The bound as the latency table alone predicts it (savings not anchored)."""
        return self.speedup_of(self.fastest_options(), scale=1.0)

    def fastest_options(self) -> dict[str, LayoutOption]:
        """Each candidate's fastest option; among those the table puts within
        :data:`FASTEST_TIE` of it (unscaled), the one removing the most weights, so that noise
        between two narrow widths does not decide which model the bound measures.

        Timed options faster than dense count even when :func:`prune_dominated` dropped them
        (a narrower width timed a hair slower than a wider one is dominated, and which of the
        two that is changes from run to run)."""
        fastest = {}
        for cand in self.candidates:
            timed = {o: self.table.option_time(cand.name, o) for o in self.table.options(cand.name)}
            times = {o: t for o, t in timed.items() if o == DENSE or t < timed[DENSE]}
            best = min(times.values())
            near = [o for o, t in times.items() if t <= best + FASTEST_TIE * abs(best)]
            fastest[cand.name] = max(near, key=lambda o, t=times: (o.level, -t[o]))
        return fastest

    @property
    def bound_spread(self) -> float:
        """Relative uncertainty of :attr:`amdahl_bound` (≈ 2 standard errors)."""
        if self.measured_bound is not None:
            return self.measured_bound.rel_spread
        fastest = self.fastest_options()
        return self.table.bound_spread_of(fastest, self.total_s / self.speedup_of(fastest))

    def anchor(self, model: onnx.ModelProto, runtime: RuntimeConfig,
               feed: Mapping[str, np.ndarray],
               progress: Callable[[int, int], None] | None = None, *,
               sessions: int = BOUND_SESSIONS, seconds: float = BOUND_SECONDS,
               max_rounds: int = BOUND_MAX_ROUNDS, max_seconds: float = BOUND_MAX_SECONDS,
               target: float | None = None,
               cache: TimingCache | None = None,
               timing: TimingSource = MEASURED) -> MeasuredBound:
        """Measure the all-fastest model and scale every saving so the table agrees with it.

        See :mod:`onnxprune.latency.anchor`. The dense end of the table is exact already; after
        this its fastest end is too, so the DP's budget and the bound come from measurements
        at both ends. ``timing`` takes the measurement (fresh session pairs on the EP, or a
        synthetic source in tests).

        Rounds of ``sessions`` fresh session pairs (``seconds`` each round) are added until the
        bound is :func:`~onnxprune.latency.anchor.settled` — precise, or clearly above or below
        ``target`` — or ``max_rounds`` rounds have run, or another round would end past
        ``max_seconds`` (wall clock, from the first). With a ``cache``, the sessions of
        earlier runs on the same all-fastest model are pooled with this run's
        (:func:`~onnxprune.latency.anchor.measure_bound`).
        """
        fastest = self.fastest_options()
        measured = measure_bound(model, self.candidates, fastest, runtime, feed,
                                 predicted=self.speedup_of(fastest), progress=progress,
                                 sessions=sessions, seconds=seconds, max_rounds=max_rounds,
                                 max_seconds=max_seconds, target=target, cache=cache,
                                 timing=timing)
        self.anchor_to(measured)
        return measured

    def anchor_to(self, measured: MeasuredBound) -> None:
        """Scale every saving so the all-fastest prediction equals ``measured``."""
        fastest = self.fastest_options()  # chosen on unscaled times: the scale cannot move it
        predicted = self.speedup_of(fastest, scale=1.0)
        self.saving_scale = saving_scale_for(lambda k: self.speedup_of(fastest, scale=k),
                                             measured.speedup)
        self.measured_bound = measured
        logger.info("Amdahl bound: the table predicts %.2fx, the all-fastest model measures "
                    "%.2fx (± %.0f%%); every saving scaled by %.3f", predicted,
                    measured.speedup, 100 * measured.rel_spread, self.saving_scale)

    def budget_for(self, speedup: float) -> float:
        """Seconds available to the candidates for the whole model to run ``speedup``x faster."""
        return self.total_s / speedup - self.base_s

    def layer_choices(self, database: Mapping[str, Sequence[PrunedWeight]],
                      energy: bool = False) -> list[LayerChoices]:
        """The DP's input; ``energy``: errors weighted by output energy (``err_energy``, where
        measured) instead of per channel."""
        layers = []
        for cand in self.candidates:
            solved = database[cand.name]
            times = np.array([self.option_time(cand.name, s.option) for s in solved])
            errors = np.array([s.err_energy if energy and s.err_energy is not None else s.err
                               for s in solved])
            layers.append(LayerChoices(cand.name, times, errors))
        return layers

    def predicted_speedup(self, chosen: Mapping[str, PrunedWeight]) -> float:
        return self.speedup_of({c.name: chosen[c.name].option for c in self.candidates})

    def speedup_of(self, options: Mapping[str, LayoutOption], scale: float | None = None
                   ) -> float:
        """Predicted speedup of one option per candidate, chained structures corrected
        (``scale``: the factor on savings, default :attr:`saving_scale`)."""
        prunable = sum(self.option_time(c.name, options[c.name], scale) for c in self.candidates)
        prunable += self.chain_correction(options, scale)
        return self.total_s / max(self.base_s + prunable, 1e-12)

    def chain_correction(self, options: Mapping[str, LayoutOption],
                         scale: float | None = None) -> float:
        """Seconds the additive table over-saves where one node shrinks on both sides.

        A node that consumes one structure and produces the next (or, in a coupled group,
        produces into the group and consumes a chain, or reads the group and writes a chain)
        appears in both structures' savings, about ``t(1 − r_in)`` and ``t(1 − r_out)``.
        Measured, the plain sum predicts well at moderate widths (digits CNN at 2x: predicted
        2.07x, measured 2.02x; MNIST CNN: the FLOP-overlap correction predicted 2.05x where
        2.53x was measured), because small kernels shrink sub-linearly. What it must not do is
        save more than the node costs: the node's part of each measured saving (by its share of
        the structure's profiled in-graph time, members included) is summed, and what exceeds
        the node's own time is added back. The DP stays additive; the allocation loop re-aims
        until this corrected prediction reaches the goal, and the verify loop corrects what
        remains.
        """
        by_name = {c.name: c for c in self.candidates}
        share: dict[str, float] = {}
        seen: dict[str, int] = {}
        for cand in self.candidates:
            context = cand.structure
            if context is None:
                continue
            weighted = [n for n in dict.fromkeys((*(p.name for p in context.producers), cand.name,
                                                  *(c.name for c in context.companions)))
                        if n in by_name]
            for name in weighted:
                seen[name] = seen.get(name, 0) + 1
            option = options.get(cand.name)
            if option is None or option.layout != "structure":
                continue
            saving = self.option_time(cand.name, DENSE) - self.option_time(cand.name, option,
                                                                           scale)
            # each weighted node's part of the measured saving, by its share of the structure's
            # in-graph time (members included: the depthwise convs' time a chain saves is no
            # node's own); by the weighted nodes' dense times where the profile has no times
            profile = self.table.profile
            parts = {n: profile.nodes_time([n]) for n in weighted} if profile else {}
            total = profile.nodes_time(context.structure.nodes) if profile else 0.0
            if total <= 0 or not all(t > 0 for t in parts.values()):
                parts = {n: self.option_time(n, DENSE) for n in weighted}
                total = sum(parts.values())
            for name, t in parts.items():
                share[name] = share.get(name, 0.0) + saving * t / max(total, 1e-12)
        return sum(max(0.0, share.get(name, 0.0) - self.option_time(name, DENSE))
                   for name, count in seen.items() if count >= 2)


def build_problem(
    model: onnx.ModelProto,
    analysis: GraphAnalysis,
    candidates: Sequence[Candidate],
    options: Mapping[str, Sequence[LayoutOption]],
    runtime: RuntimeConfig,
    config: PruneConfig,
    progress: Callable[[str, int, int], None] | None = None,
    timing: TimingSource = MEASURED,
) -> AllocationProblem:
    """Time every option (cached; or ask ``timing``), then keep only the options worth solving."""

    def on_progress(done: int, total: int, description: str) -> None:
        if progress:
            progress("timing layer options", done, total)

    table = timing.table(model, analysis, options, runtime, cache_dir=config.cache_dir,
                         progress=on_progress)
    return problem_from_table(table, candidates)


def problem_from_table(table: LatencyTable, candidates: Sequence[Candidate]) -> AllocationProblem:
    """The allocation problem of a latency table: only the options worth solving are kept."""
    useful = {}
    for cand in candidates:
        timed = table.options(cand.name)  # options that could not be built or timed are absent
        times = {o: table.option_time(cand.name, o) for o in timed}
        useful[cand.name] = prune_dominated(timed, times)
    for name, option, reason in table.dropped:
        logger.info("%s: option %s not timed: %s", name, option_label(option), reason)
    return AllocationProblem(candidates, useful, table, table.dense_total_s, table.base_s,
                             table.fingerprint)


def format_unreachable(problem: AllocationProblem, target: float) -> str:
    """Why the target cannot be met: the bound, the fixed part, the layers that cannot shrink."""
    base_share = problem.base_s / problem.total_s if problem.total_s else 0.0
    stuck = []
    for cand in problem.candidates:
        dense = problem.option_time(cand.name, DENSE)
        best = min(problem.option_time(cand.name, o) for o in problem.options[cand.name])
        stuck.append((best, dense, cand.name))
    stuck.sort(reverse=True)
    worst = ", ".join(f"{name} ({best * 1e3:.3g} ms at best, {dense * 1e3:.3g} ms dense)"
                      for best, dense, name in stuck[:3])
    spread = problem.amdahl_bound * problem.bound_spread
    return (
        f"a {target:g}x speedup is not reachable: at most {problem.amdahl_bound:.2f}x "
        f"(± {spread:.2f}, the measurement's spread) with the "
        f"allowed layouts (Amdahl bound). {base_share:.0%} of the model's "
        f"{problem.total_s * 1e3:.3g} ms is in nodes that cannot be pruned; the slowest "
        f"prunable nodes even at their fastest: {worst}"
    )
