"""The latency table: what each prunable node costs under each layout option, and what is fixed.

Only the values and the predictions read off them live here:

   ``predicted_total(assignment) = base + scale · Σ_c time_c(option_c)``
   ``amdahl_bound = T_dense / (base + scale · Σ_c min_option time_c)``

How the numbers are measured is :mod:`onnxprune.latency.build`. The allocator, the report and the
synthetic source (:mod:`~onnxprune.latency.synthetic`) read or make tables without that
machinery, so the types sit below it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from onnxprune.latency.cache import TIMING_SCHEMA
from onnxprune.latency.profile import ModelProfile
from onnxprune.layouts.base import DENSE, LayoutOption
from onnxprune.layouts.registry import option_label


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
    rel_se: tuple[float, ...] = ()

    def spread(self, option: LayoutOption) -> float:
        """Relative standard error of ``option``'s time against the dense time (0: unknown)."""
        for (known, _), se in zip(self.options, self.rel_se, strict=False):
            if known == option:
                return se
        return 0.0

    @property
    def dense_s(self) -> float:
        return self.raw_time(DENSE)

    def raw_time(self, option: LayoutOption) -> float:
        """Isolated seconds of ``option`` (no correction)."""
        for known, seconds in self.options:
            if known == option:
                return seconds
        raise KeyError(
            f"{self.name}: option {option_label(option)!r} was not timed; timed: "
            + ", ".join(option_label(o) for o, _ in self.options)
        )

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "nodes": list(self.nodes),
            "profiled_s": self.profiled_s,
            "options": [{"option": o.to_json(), "time_s": t} for o, t in self.options],
            "rel_se": list(self.rel_se),
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
            rel_se=tuple(float(x) for x in data.get("rel_se", ())),
        )


@dataclass(frozen=True)
class LatencyTable:
    """Per-candidate option times, the fixed base time, and the correction that ties them.

    Attributes:
        candidates: one entry per candidate.
        base_s: fixed time per run (everything but the candidates' nodes).
        dense_total_s: measured time per run of the whole dense model.
        scale: correction factor applied to every isolated option time (see
            :mod:`onnxprune.latency.build`).
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
    total_spread: float = 0.0

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

    def bound_spread(self, allowed_layouts: Iterable[str] | None = None) -> float:
        """Relative uncertainty (≈ 2 standard errors) of :meth:`amdahl_bound`.

        From the dense time's spread over fresh sessions and each fastest option's ratio
        standard error (independent, added in quadrature).
        """
        return self.bound_spread_of(self.fastest(allowed_layouts))

    def bound_spread_of(self, fastest: Mapping[str, LayoutOption],
                        denominator: float | None = None) -> float:
        """:meth:`bound_spread` for a given fastest option per candidate (and predicted total)."""
        denominator = self.predicted_total(fastest) if denominator is None else denominator
        if denominator <= 0:
            return 0.0
        option_var = sum(
            (self.scale * entry.raw_time(fastest[entry.name]) * entry.spread(fastest[entry.name]))
            ** 2 for entry in self.candidates
        )
        rel = math.sqrt(self.total_spread ** 2 + option_var / denominator ** 2)
        return 2.0 * rel

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
            "total_spread": self.total_spread,
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
            total_spread=float(data.get("total_spread", 0.0)),
            dropped=tuple(
                (d["candidate"], LayoutOption.from_json(d["option"]), d["reason"])
                for d in data.get("dropped", ())
            ),
        )
