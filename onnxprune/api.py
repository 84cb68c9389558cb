"""The Python API, in the style of ONNX Runtime's quantization tool.

``onnxprune.prune(model_input, model_output, speedup, calibration_data_reader=..., **options)``
mirrors ``quantize_static(model_input, model_output, calibration_data_reader, ...)``: a path or an
``onnx.ModelProto`` in, a file (or a model) out, every option a typed keyword visible to ``help()``
and IDEs, and a frozen result object back. The CLI is a thin layer over these two functions.

Heavy modules (the pipeline, ONNX Runtime) are imported inside the functions, so
``import onnxprune`` stays light.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxprune.common.errors import TargetUnreachableError, UserError
from onnxprune.config.settings import NodeOverride, PruneConfig

if TYPE_CHECKING:
    import onnx

    from onnxprune.calib.dataset import CalibrationReader
    from onnxprune.common.progress import Progress
    from onnxprune.fidelity import Fidelity
    from onnxprune.pipeline.result import Report

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PruneConfig)
             if f.default is not dataclasses.MISSING}
"""PruneConfig's defaults: the API states none of its own (they live in one place)."""

@dataclass(frozen=True)
class PlanEntry:
    """What the run chose for one prunable node (or weight shared by several nodes).

    Attributes:
        name: the candidate's name (its first node's name).
        op: "MatMul", "Gemm" or "Conv".
        nodes: every node using the weight.
        layout: the layout chosen ("dense" when left alone).
        level: the fraction of the weight's entries removed.
        label: the layout's own words, e.g. ``block 32x32 50%``.
        error: the layer's reconstruction error on the calibration statistics.
        time_dense_s: the node's timed dense cost (speedup mode), else None.
        time_after_s: the timed cost of the chosen option (speedup mode), else None.
        weights_before: weight entries before.
        weights_after: nonzero weight entries after.
    """

    name: str
    op: str
    nodes: tuple[str, ...]
    layout: str
    level: float
    label: str
    error: float
    time_dense_s: float | None
    time_after_s: float | None
    weights_before: int
    weights_after: int


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune` did.

    Attributes:
        output_path: where the model was written; None when ``model_output`` was None or
            nothing was written (dry run).
        model: the pruned model when ``model_output`` was None (otherwise read ``output_path``).
        written: whether a model was produced.
        met_target: whether the measured speedup met the target (None in the uniform modes).
        speedup: measured speedup over the dense model (median over fresh session pairs).
        speedup_low: its lower quartile over sessions (what a target is judged by).
        speedup_range: (min, max) over sessions: the spread of the measurement.
        predicted_speedup: the latency model's prediction for the chosen plan.
        amdahl_bound: the largest speedup pruning can reach (speedup mode).
        fidelity: agreement with the dense model on held-out calibration samples.
        fidelity_per_output: output name -> mean per-position relative error.
        within_bound: whether the fidelity bound holds (None without calibration data).
        plan: per prunable node, the layout and level chosen.
        notes: what the user should know (the same notes the terminal summary prints).
        report: the full report (what ``--json`` writes: ``to_json()``).
    """

    output_path: Path | None
    model: onnx.ModelProto | None
    written: bool
    met_target: bool | None
    speedup: float | None
    speedup_low: float | None
    speedup_range: tuple[float, float] | None
    predicted_speedup: float | None
    amdahl_bound: float | None
    fidelity: Fidelity | None
    fidelity_per_output: Mapping[str, float]
    within_bound: bool | None
    plan: tuple[PlanEntry, ...]
    notes: tuple[str, ...]
    report: Report = field(repr=False)

    @property
    def exit_code(self) -> int:
        """What the CLI exits with: 0, or 3 when ``best_effort`` wrote a model that misses the
        target or the fidelity bound."""
        missed = self.met_target is False or self.within_bound is False
        return TargetUnreachableError.exit_code if missed else 0

    def to_json(self) -> dict:
        """The JSON report (``--json``)."""
        from onnxprune.report.summary import report_to_json

        return report_to_json(self.report)


def prune(
    model_input: str | os.PathLike[str] | onnx.ModelProto,
    model_output: str | os.PathLike[str] | None = None,
    speedup: float | None = None,
    *,
    calibration_data_reader: CalibrationReader | None = None,
    calib_dir: str | os.PathLike[str] | None = None,
    calib_reader: str | None = None,
    calib_samples: int = _DEFAULTS["calib_samples"],
    sparsity: float | None = None,
    nm: tuple[int, int] | str | None = None,
    layouts: Sequence[str] | str = (),
    levels: Sequence[float] = _DEFAULTS["levels"],
    provider: str = _DEFAULTS["provider"],
    threads: int | None = None,
    shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
    exclude: str | None = None,
    node_overrides: Sequence[NodeOverride | Mapping[str, Any]] = (),
    seed: int = _DEFAULTS["seed"],
    search_budget: float | str = _DEFAULTS["search_budget"],
    search_evaluations: int | None = None,
    max_error: float | None = None,
    max_channel_error: float | None = None,
    metric: str | Callable[..., float] | None = None,
    max_metric_drop: float | None = None,
    max_accuracy_drop: float | None = None,
    fidelity_bound: bool = _DEFAULTS["fidelity_bound"],
    verify_sessions: int = _DEFAULTS["verify_sessions"],
    verify_seconds: float = _DEFAULTS["verify_seconds"],
    verify_rounds: int = _DEFAULTS["verify_rounds"],
    sequential: bool = _DEFAULTS["sequential"],
    error_feedback: bool = _DEFAULTS["error_feedback"],
    recover: bool = _DEFAULTS["recover"],
    recover_seconds: float | None = None,
    dry_run: bool = False,
    best_effort: bool = False,
    sparse_storage: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    save_plan: str | os.PathLike[str] | None = None,
    fix: Mapping[str, object] | None = None,
    progress: bool | Progress = False,
) -> PruneResult:
    """Prune a model to run ``speedup`` times faster (measured) on the provider.

    Give exactly one of ``speedup``, ``sparsity`` or ``nm``. Example::

        import onnxprune
        result = onnxprune.prune("model.onnx", "pruned.onnx", 2.0,
                                 calibration_data_reader=MyReader(), shapes={"input": (8, 128)})
        print(result.speedup, result.fidelity_per_output)

    Args:
        model_input: the dense model: a path, or an ``onnx.ModelProto``.
        model_output: where to write the pruned model (atomically). None: nothing is written to
            disk and the pruned model is returned as ``result.model``.
        speedup: target end-to-end speedup, measured against the dense model in fresh sessions.
        calibration_data_reader: an ONNX Runtime-style reader (any object with ``get_next()``
            returning a feed dict, None at the end), e.g. the one you pass to
            ``quantize_static``. It is drained once (up to ``calib_samples`` samples).
        calib_dir: instead: a folder of ``.npz`` batches or one ``.npy`` per input.
        calib_reader: instead: ``module:callable`` returning a reader (what ``--calib-reader``
            takes).
        calib_samples: cap on calibration samples used.
        sparsity: instead of a target: remove this fraction of every node's weights (needs one
            layout in ``layouts``).
        nm: instead of a target: an N:M pattern for every node, ``(2, 4)`` or ``"2:4"``.
        layouts: layouts allowed (names or ``"block,channel"``); empty: those fast on the
            provider.
        levels: the fractions of weights removed that the layouts offer.
        provider: execution provider: cpu, cuda, tensorrt or a full ORT name.
        threads: intra-op threads for timing (None: ORT's default).
        shapes: deployment input shapes, ``{"input": (8, 128)}`` or ``["input=8x128"]``.
        exclude: regex of node names never pruned.
        node_overrides: per-node rules (:class:`~onnxprune.config.settings.NodeOverride`, or
            dicts with ``match``, ``exclude``, ``layouts``, ``structure_kinds``, ``max_level``).
        seed: seed of every random choice.
        search_budget: seconds of SPDY's sensitivity search, or ``"200e"`` for evaluations.
        search_evaluations: cap on the allocations the search scores.
        max_error: fidelity bound: largest allowed relative output error on held-out samples
            (None: 0.2, or not checked when a ``metric`` is given).
        max_channel_error: fidelity bound on the worst output channel group, each channel's
            error over its own spread on the dense model (None: 0.5, or not checked with a
            ``metric``).
        metric: your own metric: ``"top1"``, ``"cosine"``, ``"rank[:K]"``, ``"detection[:T]"``,
            ``"module:callable"``, or a callable ``metric(dense_outputs, pruned_outputs,
            labels) -> float`` (higher is better; outputs are dicts of held-out arrays).
        max_metric_drop: the largest allowed drop of ``metric`` from the dense model's score
            (None: 0.05).
        max_accuracy_drop: also bound the top-1 accuracy drop (points; labelled data needed).
        fidelity_bound: False turns the bound off (fidelity is still measured).
        verify_sessions: fresh session pairs of the final speed measurement.
        verify_seconds: wall-clock budget of one speed measurement.
        verify_rounds: how often the budget is tightened after a measured miss.
        sequential: feed already-pruned activations forward when collecting statistics.
        error_feedback: also re-solve each layer toward the dense model's output of it; the
            search split keeps whichever re-solve scores better.
        recover: global recovery (torch, the ``recover`` extra) after the one-shot solve.
        recover_seconds: its time budget per realized model (None: sized to the model).
        dry_run: plan and predict only; nothing is written.
        best_effort: when the target cannot be met within the bound, still produce the fastest
            model found within it (``result.met_target`` is then False).
        sparse_storage: store unstructured-pruned weights as ``sparse_initializer``.
        cache_dir: latency-table cache folder (None: the user cache folder).
        save_plan: also write the plan of the written model here (JSON; ``onnxprune apply``
            re-materializes it byte-identically without timing).
        fix: inputs pinned to a constant, ``{"sr": 16000}``: folded away with the ``If`` nodes
            they decide, and removed from the written model (see ``docs/subgraphs.md``).
        progress: True shows progress on stderr (bars on a terminal, lines otherwise); or a
            ``(stage, done, total)`` callback; False: silent.

    Returns:
        A :class:`PruneResult`.

    Raises:
        UserError: bad input or options (the CLI's exit code 2).
        TargetUnreachableError: the target cannot be met within the fidelity bound (exit code
            3); its ``report`` says why and what was reachable. Nothing is written.
    """
    from onnxprune.config.settings import parse_nm, parse_search_budget
    from onnxprune.graph.shapes import parse_shape_specs

    if calibration_data_reader is not None and (calib_dir is not None or calib_reader):
        raise UserError("give one of calibration_data_reader, calib_dir or calib_reader")
    if calib_dir is not None and not Path(calib_dir).exists():
        raise UserError(f"calibration folder not found: {calib_dir}")
    seconds, evaluations = (parse_search_budget(search_budget) if isinstance(search_budget, str)
                            else (float(search_budget), None))
    config = PruneConfig(
        speedup=speedup, sparsity=sparsity,
        nm=parse_nm(nm) if isinstance(nm, str) else (tuple(nm) if nm is not None else None),
        layouts=_names(layouts), levels=tuple(levels), provider=provider, threads=threads,
        shapes=_shapes(shapes, parse_shape_specs),
        calib_dir=Path(calib_dir) if calib_dir is not None else None, calib_reader=calib_reader,
        calib_samples=calib_samples, exclude=exclude, seed=seed, dry_run=dry_run,
        best_effort=best_effort, search_budget=seconds,
        search_evaluations=search_evaluations if search_evaluations is not None else evaluations,
        verify_rounds=verify_rounds, cache_dir=Path(cache_dir) if cache_dir is not None else None,
        sequential=sequential, error_feedback=error_feedback, recover=recover,
        recover_seconds=recover_seconds, sparse_storage=sparse_storage, max_error=max_error,
        max_channel_error=max_channel_error, metric=metric, max_metric_drop=max_metric_drop,
        max_accuracy_drop=max_accuracy_drop, fidelity_bound=fidelity_bound,
        verify_sessions=verify_sessions, verify_seconds=verify_seconds,
        overrides=tuple(_override(o, i) for i, o in enumerate(node_overrides, 1)),
        save_plan=Path(save_plan) if save_plan is not None else None,
        fix=dict(fix or {}),
    )
    return prune_with_config(model_input, model_output, config, calibration_data_reader,
                             progress)


def prune_with_config(
    model_input: str | os.PathLike[str] | onnx.ModelProto,
    model_output: str | os.PathLike[str] | None,
    config: PruneConfig,
    calibration_data_reader: CalibrationReader | None = None,
    progress: bool | Progress = False,
) -> PruneResult:
    """:func:`prune` with the options already in a :class:`PruneConfig`."""
    from onnxprune.calib.dataset import read_calib_reader
    from onnxprune.pipeline.prune import prune as run_pipeline

    calibration = (read_calib_reader(calibration_data_reader, config.calib_samples)
                   if calibration_data_reader is not None else None)
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="onnxprune-")))
        in_path = _input_path(model_input, scratch)
        out_path = Path(model_output) if model_output is not None else scratch / "pruned.onnx"
        callback = stack.enter_context(_progress(progress))
        try:
            report = run_pipeline(in_path, out_path, config, progress=callback,
                                  calibration=calibration)
        except TargetUnreachableError as exc:
            if exc.report is not None and not isinstance(model_input, str | os.PathLike):
                exc.report.input_path = "<onnx.ModelProto>"
            raise
        model = None
        if model_output is None:
            report.output_path = None
            if report.written:
                from onnxprune.graph.load import load_model

                model = load_model(out_path)
        if not isinstance(model_input, str | os.PathLike):
            report.input_path = "<onnx.ModelProto>"
    return _result(report, Path(model_output) if model_output is not None else None, model)


def _names(layouts: Sequence[str] | str) -> tuple[str, ...]:
    items = layouts.split(",") if isinstance(layouts, str) else layouts
    return tuple(x.strip() for x in items if x.strip())


def _shapes(shapes, parse_specs) -> dict[str, tuple[int, ...]]:
    if not shapes:
        return {}
    if isinstance(shapes, Mapping):  # {"input": (8, 128)} -> "input=8x128", checked as on the CLI
        try:
            shapes = [f"{k}={'x'.join(str(d) for d in v)}" for k, v in shapes.items()]
        except TypeError:
            raise UserError(f"bad shapes {dict(shapes)!r}: expected name -> sequence of "
                            "ints") from None
    if isinstance(shapes, str):
        shapes = [shapes]
    return parse_specs(tuple(shapes))


def _override(rule: NodeOverride | Mapping[str, Any], index: int) -> NodeOverride:
    if isinstance(rule, NodeOverride):
        return rule
    from onnxprune.config.file import node_override

    return node_override(rule, f"node_overrides[{index - 1}]")


def _input_path(model_input, scratch: Path) -> Path:
    """A path for the pipeline: the given one, or a ModelProto written to the scratch folder."""
    if isinstance(model_input, str | os.PathLike):
        return Path(model_input)
    import onnx

    if not isinstance(model_input, onnx.ModelProto):
        raise UserError(f"model_input must be a path or an onnx.ModelProto, not "
                        f"{type(model_input).__name__}")
    from onnxprune.graph.load import save_model_atomic

    return save_model_atomic(model_input, scratch / "input.onnx")


@contextlib.contextmanager
def _progress(progress: bool | Progress) -> Iterator[Progress | None]:
    if progress is True:
        from onnxprune.common.progress import progress_reporter

        with progress_reporter() as callback:
            yield callback
    elif callable(progress):
        yield progress
    else:
        yield None


def _result(report: Report, output_path: Path | None, model) -> PruneResult:
    from onnxprune.layouts.registry import option_label

    measured = report.measured
    fidelity = report.fidelity
    return PruneResult(
        output_path=output_path if report.written else None, model=model,
        written=report.written, met_target=report.met_target,
        speedup=measured.speedup if measured else None,
        speedup_low=measured.speedup_low if measured else None,
        speedup_range=(measured.speedup_min, measured.speedup_max) if measured else None,
        predicted_speedup=report.predicted_speedup, amdahl_bound=report.amdahl_bound,
        fidelity=fidelity,
        fidelity_per_output={o.name: o.error_mean for o in fidelity.outputs} if fidelity else {},
        within_bound=report.within_bound,
        plan=tuple(PlanEntry(
            name=layer.name, op=layer.op, nodes=tuple(layer.nodes), layout=layer.option.layout,
            level=layer.option.level, label=option_label(layer.option), error=layer.err,
            time_dense_s=layer.time_dense_s, time_after_s=layer.time_after_s,
            weights_before=layer.weights_before, weights_after=layer.weights_after,
        ) for layer in report.layers),
        notes=tuple(report.notes), report=report,
    )


@dataclass(frozen=True)
class ProfiledNode:
    """One prunable node as ``profile`` timed it.

    Attributes:
        name: the candidate's name.
        op: its op type.
        role: "node", "consumer" (of a channel structure) or "producer" (of one).
        dense_s: its timed dense cost.
        fastest: label of its fastest option.
        fastest_s: that option's timed cost.
        structure: the structure it consumes, as JSON, when it is a consumer.
    """

    name: str
    op: str
    role: str
    dense_s: float
    fastest: str
    fastest_s: float
    structure: Mapping[str, Any] | None


@dataclass(frozen=True)
class ProfileResult:
    """What :func:`profile` measured.

    Attributes:
        nodes: per prunable node, its dense time and fastest option.
        amdahl_bound: the largest whole-model speedup pruning can reach on this provider.
        amdahl_bound_spread: the bound's relative measurement spread.
        dense_total_s: the measured whole-model time.
        base_s: the time that no pruning removes (the unprunable part).
        notes: notes on the input shapes.
        data: everything, as ``--json`` writes it.
    """

    nodes: tuple[ProfiledNode, ...]
    amdahl_bound: float
    amdahl_bound_spread: float
    dense_total_s: float
    base_s: float
    notes: tuple[str, ...]
    data: Mapping[str, Any] = field(repr=False)

    def to_json(self) -> dict:
        return dict(self.data)


def profile(
    model_input: str | os.PathLike[str] | onnx.ModelProto,
    *,
    shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
    provider: str = _DEFAULTS["provider"],
    threads: int | None = None,
    layouts: Sequence[str] | str = (),
    cache_dir: str | os.PathLike[str] | None = None,
    fix: Mapping[str, object] | None = None,
    bound_seconds: float = 25.0,
    progress: bool | Progress = False,
) -> ProfileResult:
    """Time every prunable node and its layout options; the reachable speedup (Amdahl bound).

    Args:
        model_input: the model: a path, or an ``onnx.ModelProto``.
        shapes: deployment input shapes, ``{"input": (8, 128)}`` or ``["input=8x128"]``.
        provider: execution provider: cpu, cuda, tensorrt or a full ORT name.
        threads: intra-op threads (None: ORT's default).
        layouts: layouts considered (default: those fast on the provider).
        cache_dir: latency-table cache folder (None: the user cache folder).
        fix: inputs pinned to a constant (folded away, as :func:`prune` does).
        bound_seconds: the longest time spent measuring the Amdahl bound: rounds of 5 fresh
            session pairs (5 s) are added until its spread is within 5%; sessions of earlier
            runs on the same model, kept in the latency cache, are pooled with them.
        progress: True shows progress on stderr; or a ``(stage, done, total)`` callback.

    Returns:
        A :class:`ProfileResult`.
    """
    import onnx

    from onnxprune.allocate.budget import problem_from_table
    from onnxprune.common.runtime import synthetic_feed
    from onnxprune.graph.load import load_model
    from onnxprune.graph.shapes import parse_shape_specs
    from onnxprune.latency.anchor import BOUND_MAX_ROUNDS, bound_cache
    from onnxprune.latency.build import build_latency_table
    from onnxprune.layouts.base import DENSE
    from onnxprune.layouts.registry import option_label
    from onnxprune.pipeline.analyse import analyse

    if not bound_seconds > 0:
        raise UserError(f"bound_seconds must be greater than 0, got {bound_seconds!r}")
    if isinstance(model_input, onnx.ModelProto):
        model, model_name = model_input, "<onnx.ModelProto>"
    else:
        model, model_name = load_model(model_input), str(model_input)
    # The analysis prune runs (graph/prepare.py, candidates, structures, options); any target
    # reads as "speedup mode", where every option of every layout is on the menu.
    config = PruneConfig(speedup=2.0, layouts=_names(layouts), provider=provider,
                         threads=threads, shapes=_shapes(shapes, parse_shape_specs),
                         fix=dict(fix or {}))
    graph = analyse(model, config, source=model_name, require_candidates=False)
    model, bound, runtime, analysis = graph.model, graph.bound_shapes, graph.runtime, graph.analysis
    candidates, producers, found = list(graph.candidates), graph.producers, graph.structures
    names, options = list(graph.layouts), graph.options
    with _progress(progress) as callback:
        table = build_latency_table(
            model, analysis, options, runtime, cache_dir=cache_dir,
            progress=lambda done, total, desc: callback and callback(
                "timing layer options", done, total),
        )
        problem = problem_from_table(table, candidates)
        measured = problem.anchor(
            model, runtime, synthetic_feed(bound.as_tuples()),
            max_rounds=BOUND_MAX_ROUNDS * 10, max_seconds=bound_seconds,
            cache=bound_cache(Path(cache_dir) if cache_dir is not None else None),
            progress=lambda done, total: callback and callback(
                "measuring the Amdahl bound", done, total))
    fastest = problem.fastest_options()
    rows = [
        {"name": c.name, "op": c.op, "dense_s": table.option_time(c.name, DENSE),
         "fastest": option_label(fastest[c.name]),
         "fastest_s": problem.option_time(c.name, fastest[c.name]),
         "structure": c.structure.structure.to_json() if c.structure else None,
         "role": ("consumer" if c.structure else "producer" if c.name in producers else "node")}
        for c in candidates
    ]
    data = {
        "model": model_name, "inputs": bound.shapes(), "provider": runtime.provider,
        "threads": threads, "layouts": names, "nodes": rows,
        "dense_total_s": table.dense_total_s, "base_s": table.base_s,
        "predicted_dense_s": table.base_s + table.isolated_dense_s, "gap_s": table.gap_s,
        "scale": table.scale, "amdahl_bound": problem.amdahl_bound,
        "amdahl_bound_spread": problem.bound_spread,
        "amdahl_bound_predicted": problem.predicted_bound,
        "amdahl_bound_measured": measured.to_json(), "saving_scale": problem.saving_scale,
        "unattributed_s": max(table.dense_total_s - table.profile.to_total(table.overhead_s)
                              * sum(table.profile.node_times.values()), 0.0)
        if table.profile else None,
        "structures": [s.to_json() for s in found.found] if found else [],
        "structures_blocked": [{"producer": b.producer, "reason": b.reason}
                               for b in found.unstructured] if found else [],
        "timings_run": table.timings_run, "timings_cached": table.timings_cached,
        "fingerprint": table.fingerprint, "environment": dict(table.environment),
    }
    return ProfileResult(
        nodes=tuple(ProfiledNode(r["name"], r["op"], r["role"], r["dense_s"], r["fastest"],
                                 r["fastest_s"], r["structure"]) for r in rows),
        amdahl_bound=problem.amdahl_bound, amdahl_bound_spread=problem.bound_spread,
        dense_total_s=table.dense_total_s, base_s=table.base_s,
        notes=tuple(bound.notes) + tuple(graph.fixed.notes),
        data=data,
    )


__all__ = ["PlanEntry", "PruneResult", "ProfiledNode", "ProfileResult", "prune",
           "prune_with_config", "profile"]
