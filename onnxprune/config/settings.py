"""One typed, frozen configuration for a pruning run.

The CLI builds it from flags and the Python API takes it directly, so defaults are stated exactly
once (here) and a misspelt option is an error instead of a silently ignored dict key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from onnxprune.common.errors import UserError
from onnxprune.layouts.base import DEFAULT_LEVELS

DEFAULT_PROVIDER = "cpu"
STRUCTURE_KINDS = ("ffn", "conv-chain", "heads", "channels", "residual", "fan-out")
"""The kinds of channel structure discovery reports (``structures/``)."""
DEFAULT_MAX_ERROR = 0.2
"""Default fidelity bound: the worst output's mean per-position relative error vs dense.

0.2 keeps an embedding's cosine near 0.98 and, on the shipped classifiers, their held-out
accuracy within about a point (docs/fidelity.md has the measurements)."""
DEFAULT_MAX_CHANNEL_ERROR = 0.5
"""Default bound on the worst channel group's error, each output channel against its own spread
on the dense model (``fidelity/channels.py``): a destroyed channel scores about 1 however small
its scale; docs/fidelity.md has what the benchmark models score."""
DEFAULT_MAX_METRIC_DROP = 0.05
"""Default bound on the drop of the user's ``--metric`` (its units: 0.05 of an F1, of an
agreement, of a Spearman correlation)."""


@dataclass(frozen=True)
class NodeOverride:
    """A per-node rule (``[[node]]`` in a config file): what one node, or nodes matching a regex,
    may do, whatever the run-wide options say.

    Attributes:
        match: a node name, or a regular expression matched against the whole name of each node
            of a candidate (a weight shared by several nodes matches through any of them).
        exclude: never prune the matching nodes.
        layouts: the only layouts the node may take (``structure`` included: then it is pruned
            as part of a channel structure when one is found). Given layouts are offered even when
            the run-wide ``layouts`` do not list them: this forces them.
        structure_kinds: the structure kinds the node may be pruned as (``ffn``, ``conv-chain``,
            ``heads``, ``channels``, and the coupled groups ``residual`` and ``fan-out``); a
            structure of another kind through the node is not used.
            Implies ``layouts = ["structure"]`` unless ``layouts`` is given.
        max_level: the largest fraction of the node's weights that may be removed.
        source: where the rule came from (``onnxprune.toml, node #2``), for messages.
    """

    match: str
    exclude: bool = False
    layouts: tuple[str, ...] = ()
    structure_kinds: tuple[str, ...] = ()
    max_level: float | None = None
    source: str = "override"

    def __post_init__(self) -> None:
        try:
            re.compile(self.match)
        except re.error as exc:
            raise UserError(f"{self.source}: match is not a valid regular expression: "
                            f"{exc}") from None
        if self.max_level is not None and not 0.0 <= self.max_level < 1.0:
            raise UserError(f"{self.source}: max_level must be in [0, 1) (got {self.max_level})")
        from onnxprune.layouts.registry import LAYOUTS

        unknown = [name for name in self.layouts if name not in LAYOUTS]
        if unknown:
            raise UserError(f"{self.source}: unknown layout {unknown[0]!r} in layouts (one of: "
                            f"{', '.join(LAYOUTS)})")
        unknown = [kind for kind in self.structure_kinds if kind not in STRUCTURE_KINDS]
        if unknown:
            raise UserError(f"{self.source}: unknown structure kind {unknown[0]!r} in "
                            f"structure_kinds (one of: {', '.join(STRUCTURE_KINDS)})")
        if self.structure_kinds and self.layouts and "structure" not in self.layouts:
            raise UserError(f"{self.source}: structure_kinds needs 'structure' in layouts")

    def matches(self, node_names: tuple[str, ...] | list[str]) -> bool:
        return any(re.fullmatch(self.match, name) for name in node_names)

    @property
    def allowed_layouts(self) -> tuple[str, ...]:
        """The layouts this rule forces ("structure" alone when only kinds are given)."""
        if self.layouts:
            return self.layouts
        return ("structure",) if self.structure_kinds else ()


@dataclass(frozen=True)
class PruneConfig:
    """Everything that decides what a pruning run does.

    Attributes:
        speedup: target end-to-end speedup (measured), e.g. 3.0; None for a uniform-level run.
        sparsity: uniform fraction of weights removed in every node (with ``layouts``), instead of
            a speedup target.
        nm: an N:M pattern applied to every node, e.g. (2, 4).
        layouts: layouts the allocator may use; empty means "the layouts fast on the provider".
        levels: the levels (fractions removed) the layouts offer.
        provider: execution provider (short or full ORT name).
        threads: intra-op threads used for timing and verification (None: ORT's default).
        shapes: deployment input shapes by input name.
        calib_dir: calibration folder (.npz batches or .npy per input); None = data-free proxy.
        calib_reader: ``module:callable`` returning an ORT ``CalibrationDataReader``.
        calib_samples: cap on calibration samples read.
        exclude: regex of node names never pruned.
        seed: seed of every random choice.
        dry_run: plan and predict, write nothing.
        best_effort: when the target is missed, still write the fastest model found.
        search_budget: seconds for SPDY's coefficient search (0 disables it).
        search_evaluations: cap on allocations the search scores (None: only the time cap).
        verify_rounds: how many times to tighten the budget after a measured miss.
        cache_dir: latency-table cache (None: the user cache folder).
        sequential: feed already-pruned activations forward when collecting statistics.
        error_feedback: also re-solve sequentially toward the dense model's output of each
            layer (``min ‖Ŵ·X_pruned − W·X_dense‖``), so each layer absorbs the error upstream;
            the search split keeps whichever re-solve scores better (docs/recovery.md).
        recover: global recovery after the one-shot solve (every remaining weight tuned
            together toward the dense outputs, masks fixed; needs torch: the ``recover`` extra).
        recover_seconds: its time budget per realized model (None: sized to the model).
        sparse_storage: write unstructured-pruned weights as ONNX ``sparse_initializer`` (a
            smaller file; ONNX Runtime densifies them on load, so no speedup).
        max_error: fidelity bound, the largest allowed relative output error (worst output's
            mean per-position ‖y − y_dense‖ / ‖y_dense‖) on held-out calibration samples. None:
            :data:`DEFAULT_MAX_ERROR`, or not checked when a ``metric`` is given.
        max_channel_error: fidelity bound on the worst channel group (each output channel's
            RMS error over its spread on the dense model). None: :data:`DEFAULT_MAX_CHANNEL_ERROR`,
            or not checked when a ``metric`` is given.
        metric: the user's own metric: a built-in name (``top1``, ``cosine``, ``rank[:K]``,
            ``detection[:T]``), ``module:callable``, ``file.py:callable``, or (API) a callable
            ``metric(dense_outputs, pruned_outputs, labels) -> float``, higher is better. With a
            metric, it is what the bound holds (plus the error bounds only when given).
        max_metric_drop: the largest allowed drop of ``metric`` from the dense model's score
            (None: :data:`DEFAULT_MAX_METRIC_DROP`).
        max_accuracy_drop: fidelity bound in accuracy points on held-out labelled samples
            (None: not checked; needs labels).
        fidelity_bound: False turns the bound off (fidelity is still measured and reported).
        verify_sessions: fresh session pairs the final speed measurement runs in.
        verify_seconds: wall-clock budget of one final speed measurement.
        overrides: per-node rules, in order; for each node the first matching rule applies.
        save_plan: where to write the plan of the written model (``onnxprune apply`` replays it
            without timing); None: no plan.
        fix: inputs pinned to a constant by name (``--fix NAME=VALUE``): a number, a list, or
            text such as ``"16000"`` / ``"1,2"``, read as the input's declared dtype. They are
            folded away (with the ``If`` nodes they decide) and removed from the written model.
    """

    speedup: float | None = None
    sparsity: float | None = None
    nm: tuple[int, int] | None = None
    layouts: tuple[str, ...] = ()
    levels: tuple[float, ...] = DEFAULT_LEVELS
    provider: str = DEFAULT_PROVIDER
    threads: int | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    calib_dir: Path | None = None
    calib_reader: str | None = None
    calib_samples: int = 512
    exclude: str | None = None
    seed: int = 0
    dry_run: bool = False
    best_effort: bool = False
    search_budget: float = 30.0
    search_evaluations: int | None = None
    verify_rounds: int = 3
    cache_dir: Path | None = None
    sequential: bool = True
    error_feedback: bool = True
    recover: bool = True
    recover_seconds: float | None = None
    sparse_storage: bool = False
    max_error: float | None = None
    max_channel_error: float | None = None
    metric: str | Callable | None = None
    max_metric_drop: float | None = None
    max_accuracy_drop: float | None = None
    fidelity_bound: bool = True
    verify_sessions: int = 5
    verify_seconds: float = 6.0
    overrides: tuple[NodeOverride, ...] = ()
    save_plan: Path | None = None
    fix: dict[str, object] = field(default_factory=dict)

    @property
    def error_limits(self) -> tuple[float | None, float | None]:
        """(max relative error, max channel error) the bound checks: the defaults, or with a
        metric only those given."""
        if self.metric is not None:
            return self.max_error, self.max_channel_error
        return (DEFAULT_MAX_ERROR if self.max_error is None else self.max_error,
                DEFAULT_MAX_CHANNEL_ERROR if self.max_channel_error is None
                else self.max_channel_error)

    @property
    def metric_limit(self) -> float | None:
        """The largest allowed metric drop (None: no metric)."""
        if self.metric is None:
            return None
        return DEFAULT_MAX_METRIC_DROP if self.max_metric_drop is None else self.max_metric_drop

    def override_for(self, node_names: tuple[str, ...] | list[str]) -> NodeOverride | None:
        """The first per-node rule matching any of ``node_names``, or None."""
        return next((o for o in self.overrides if o.matches(node_names)), None)

    def __post_init__(self) -> None:
        modes = sum(x is not None for x in (self.speedup, self.sparsity, self.nm))
        if modes != 1:
            raise UserError("give exactly one of --speedup, --sparsity or --nm")
        if self.speedup is not None and not self.speedup > 1.0:
            raise UserError(f"--speedup must be greater than 1 (got {self.speedup})")
        if self.sparsity is not None and not 0.0 < self.sparsity < 1.0:
            raise UserError(f"--sparsity must be between 0 and 1 (got {self.sparsity})")
        if self.nm is not None and not 0 < self.nm[0] < self.nm[1]:
            raise UserError(f"--nm needs 0 < N < M (got {self.nm[0]}:{self.nm[1]})")
        if self.threads is not None and self.threads < 1:
            raise UserError("--threads must be at least 1")
        if self.exclude:
            try:
                re.compile(self.exclude)
            except re.error as exc:
                raise UserError(f"--exclude is not a valid regular expression: {exc}") from None
        if self.calib_dir is not None and self.calib_reader is not None:
            raise UserError("give either --calib or --calib-reader, not both")
        if self.calib_samples < 1:
            raise UserError("--calib-samples must be at least 1")
        if self.recover_seconds is not None and not self.recover_seconds > 0:
            raise UserError(f"--recover-seconds must be greater than 0 (got "
                            f"{self.recover_seconds})")
        for flag, limit in (("--max-error", self.max_error),
                            ("--max-channel-error", self.max_channel_error)):
            if limit is not None and not limit > 0:
                raise UserError(f"{flag} must be greater than 0 (got {limit})")
        if self.max_metric_drop is not None:
            if self.metric is None:
                raise UserError("--max-metric-drop bounds a --metric; give one (e.g. --metric "
                                "top1)")
            if not self.max_metric_drop >= 0:
                raise UserError(f"--max-metric-drop must be at least 0 (got "
                                f"{self.max_metric_drop})")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise UserError("--max-accuracy-drop must be at least 0 points")
        if overlap := sorted(set(self.fix) & set(self.shapes)):
            raise UserError(f"input {overlap[0]!r} is given both --fix and --shape; a pinned "
                            "input is removed from the model, so drop its --shape")
        if self.verify_sessions < 1:
            raise UserError("--verify-sessions must be at least 1")


def parse_nm(text: str) -> tuple[int, int]:
    """Parse ``N:M`` (e.g. ``2:4``)."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match:
        raise UserError(f"bad --nm {text!r}: expected N:M, e.g. 2:4")
    return int(match.group(1)), int(match.group(2))


def parse_search_budget(text: str) -> tuple[float, int | None]:
    """``--search-budget``: seconds (``30``, ``30s``) or evaluations (``200e``, ``200evals``).

    Returns:
        (seconds, evaluations); an evaluation budget comes with a generous time cap of one hour.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|seconds|e|evals|evaluations)?\s*",
                         text.lower())
    if not match:
        raise UserError(
            f"bad --search-budget {text!r}: give seconds (e.g. 30 or 30s) or evaluations "
            "(e.g. 200e)"
        )
    value, unit = float(match.group(1)), match.group(2) or "s"
    if unit.startswith("e"):
        return (3600.0, int(value)) if value >= 1 else (0.0, None)
    return value, None
