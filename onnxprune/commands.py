"""What each CLI command does, between parsed flags and the library: progress bars and printing.

Kept apart from ``cli.py`` so click only parses, and from the library so the library never prints.
``prune`` and ``profile`` call the Python API (:mod:`onnxprune.api`) and print its result.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from onnxprune.common.errors import TargetUnreachableError, UserError
from onnxprune.config.settings import NodeOverride
from onnxprune.graph.shapes import parse_shape_specs


def progress_bars(quiet: bool, log_json: Path | None = None):
    """The run's progress callback (see :mod:`onnxprune.common.progress`): bars on a terminal, plain
    lines with an ETA otherwise, nothing with ``quiet``; JSON lines to ``log_json``."""
    from onnxprune.common.progress import progress_reporter

    return progress_reporter(quiet=quiet, log_json=log_json)


def run_prune(input_path: str, output_path: str, *, speedup, sparsity, nm, layouts, calib_dir,
              calib_reader, calib_samples, shapes, provider, threads, json_path, exclude, seed,
              search_budget, max_error, max_accuracy_drop, fidelity_bound, verify_sessions,
              max_channel_error=None, metric=None, max_metric_drop=None,
              dry_run, best_effort, sparse_storage, cache_dir, quiet, console: Console,
              log_json: Path | None = None, node_overrides: Sequence[NodeOverride] = (),
              html_path: str | None = None, save_plan: Path | None = None,
              fixes: tuple[str, ...] = (), recover: bool = True,
              recover_seconds: float | None = None, error_feedback: bool = True) -> int:
    """``onnxprune prune``: the API call, then the summary, the JSON, and the exit code."""
    from onnxprune.api import prune
    from onnxprune.graph.fold import parse_fix_specs
    from onnxprune.report.html import check_html_path
    from onnxprune.report.jsonio import write_json
    from onnxprune.report.summary import render_report, report_to_json

    check_html_path(html_path)
    try:
        with progress_bars(quiet, log_json) as progress:
            result = prune(
                input_path, output_path, speedup, sparsity=sparsity, nm=nm, layouts=layouts,
                calib_dir=calib_dir, calib_reader=calib_reader, calib_samples=calib_samples,
                shapes=shapes, provider=provider, threads=threads, exclude=exclude, seed=seed,
                search_budget=search_budget, max_error=max_error,
                max_channel_error=max_channel_error, metric=metric,
                max_metric_drop=max_metric_drop, max_accuracy_drop=max_accuracy_drop,
                fidelity_bound=fidelity_bound,
                verify_sessions=verify_sessions, dry_run=dry_run, best_effort=best_effort,
                sparse_storage=sparse_storage, cache_dir=cache_dir,
                node_overrides=node_overrides, save_plan=save_plan,
                fix=parse_fix_specs(fixes), progress=progress, recover=recover,
                recover_seconds=recover_seconds, error_feedback=error_feedback,
            )
    except TargetUnreachableError as exc:
        if json_path and exc.report is not None:  # pipelines read why, and what was reachable
            data = report_to_json(exc.report)
            data["refused"] = str(exc)
            write_json(data, json_path)
        if html_path and exc.report is not None:
            _write_prune_html({**report_to_json(exc.report), "refused": str(exc)}, html_path)
        raise
    report = result.report
    if json_path != "-":
        render_report(console, report)
    if json_path:
        write_json(result.to_json(), json_path)
    if html_path:
        _write_prune_html(report_to_json(report), html_path)
    if result.met_target is False:
        console.print("[yellow]the target was not met within the fidelity bound; --best-effort "
                      "wrote the fastest model found within it[/yellow]")
    elif result.within_bound is False:
        console.print("[yellow]the model breaks the fidelity bound; --best-effort wrote it "
                      "anyway[/yellow]")
    return result.exit_code


def _write_prune_html(data: dict, path: str) -> None:
    from onnxprune.report.html import render_prune_html, write_html

    write_html(render_prune_html(data), path)


def run_apply(input_path: str, output_path: str, *, plan_path: Path, calib_dir, calib_reader,
              json_path, quiet, console: Console) -> int:
    from onnxprune.pipeline.replay import apply_plan
    from onnxprune.report.jsonio import write_json
    from onnxprune.report.summary import render_report, report_to_json

    if calib_dir is not None and not Path(calib_dir).exists():
        raise UserError(f"calibration folder not found: {calib_dir}")
    with progress_bars(quiet) as progress:
        report = apply_plan(input_path, output_path, plan_path, calib_dir, calib_reader,
                            progress=progress)
    if json_path != "-":
        render_report(console, report)
    if json_path:
        write_json(report_to_json(report), json_path)
    return 0


def run_bench(model_a: str, model_b: str, *, shapes, provider, threads, json_path, seconds,
              sessions, console: Console, load) -> None:
    from onnxprune.common.runtime import RuntimeConfig, resolve_provider, synthetic_feed
    from onnxprune.graph.shapes import bind_input_shapes, graph_inputs
    from onnxprune.latency.measure import bench_sessions
    from onnxprune.report.jsonio import write_json

    if sessions < 1:
        raise UserError("--sessions must be at least 1")
    if not seconds > 0:
        raise UserError("--seconds must be greater than 0")
    a, b = load(model_a), load(model_b)
    requested = parse_shape_specs(shapes)
    bound = bind_input_shapes(a, requested)
    names_a = sorted(i.name for i in graph_inputs(a))
    names_b = sorted(i.name for i in graph_inputs(b))
    if names_a != names_b:
        raise UserError(f"the models have different inputs: {names_a} vs {names_b}"
                        + (" (B was written with prune --fix? pass the same --fix NAME=VALUE "
                           "here to pin A's input)" if set(names_b) < set(names_a) else ""))
    runtime = RuntimeConfig(provider=resolve_provider(provider), threads=threads)
    feed = synthetic_feed(bound.as_tuples())
    result = bench_sessions(load_bytes(a), load_bytes(b), {"synthetic": feed}, runtime,
                            sessions=sessions, seconds=seconds)
    if json_path != "-":
        shapes_text = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in bound.shapes().items())
        for note in bound.notes:
            console.print(f"[yellow]note:[/yellow] {note}")
        console.print(f"inputs: {shapes_text}; provider {runtime.provider}, threads "
                      f"{threads or 'default'}")
        console.print(f"A {model_a}: {result.time_a_s * 1e3:.3f} ms (median)")
        console.print(f"B {model_b}: {result.time_b_s * 1e3:.3f} ms (median)")
        per_session = " ".join(f"{s.speedup_median:.2f}" for s in result.sessions)
        console.print(f"[bold]speedup of B over A: {result.speedup:.2f}x[/bold] (median over "
                      f"{len(result.sessions)} fresh session pairs: {per_session}; lower quartile "
                      f"{result.speedup_low:.2f}x; {result.pairs} interleaved pairs in all)")
    if json_path:
        write_json({"a": model_a, "b": model_b, "inputs": bound.shapes(),
                    "provider": runtime.provider, "threads": threads, **result.to_json()},
                   json_path)


def load_bytes(model) -> bytes:
    from onnxprune.graph.load import stamp_ir_version

    return stamp_ir_version(model).SerializeToString()


def run_profile(model_path: str, *, shapes, provider, threads, json_path, layouts, cache_dir,
                quiet, console: Console, log_json: Path | None = None,
                html_path: str | None = None, fixes: tuple[str, ...] = (),
                bound_seconds: float = 25.0) -> None:
    """``onnxprune profile``: the API call, then the table and the JSON."""
    from onnxprune.api import profile
    from onnxprune.graph.fold import parse_fix_specs
    from onnxprune.report.jsonio import write_json
    from onnxprune.report.profile import render_profile

    with progress_bars(quiet, log_json) as progress:
        result = profile(model_path, shapes=shapes, provider=provider, threads=threads,
                         layouts=layouts, cache_dir=cache_dir, fix=parse_fix_specs(fixes),
                         bound_seconds=bound_seconds, progress=progress)
    data = result.to_json()
    if json_path != "-":
        render_profile(console, data, result.notes)
    if json_path:
        write_json(data, json_path)
    if html_path:
        from onnxprune.report.html import render_profile_html, write_html

        write_html(render_profile_html(data, result.notes), html_path)
