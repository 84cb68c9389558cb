"""What a pruning run reports: per layer, and for the whole run.

The terminal summary, the JSON report, the HTML page and the Python API's ``PruneResult`` all
read this one :class:`Report`, filled in stage by stage (``pipeline/stages.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from onnxprune.fidelity import Fidelity, FidelityBound
from onnxprune.graph.candidates import SkippedNode
from onnxprune.latency.measure import SpeedResult
from onnxprune.layouts.base import LayoutOption


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
    # Whether the error-feedback re-solve was kept over the plain one (search-split losses).
    error_feedback: dict | None = None

