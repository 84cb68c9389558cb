"""What each CLI command does, between parsed flags and the library: progress bars and printing.

Kept apart from ``cli.py`` so click only parses, and from the library so the library never prints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from onnxprune.config import PruneConfig, parse_nm, parse_search_budget
from onnxprune.errors import TargetUnreachableError, UserError
from onnxprune.graph.shapes import parse_shape_specs


@contextlib.contextmanager
def progress_bars(quiet: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A (stage, done, total) callback drawing one rich progress bar per stage (on stderr)."""
    if quiet:
        yield lambda stage, done, total: None
        return
    console = Console(stderr=True)
    bars = Progress(TextColumn("{task.description:<26}"), BarColumn(), TextColumn(
        "{task.completed}/{task.total}"), TimeElapsedColumn(), console=console, transient=False)
    tasks: dict[str, int] = {}
    with bars:
        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total or None)
            bars.update(tasks[stage], completed=done, total=total or None)
        yield update


def _layouts(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def run_prune(input_path: str, output_path: str, *, speedup, sparsity, nm, layouts, calib_dir,
              calib_reader, calib_samples, shapes, provider, threads, json_path, exclude, seed,
              search_budget, max_error, max_accuracy_drop, fidelity_bound, verify_sessions,
              dry_run, best_effort, sparse_storage, cache_dir, quiet, console: Console,
              fixes: tuple[str, ...] = ()) -> int:
    from onnxprune.graph.fold import parse_fix_specs
    from onnxprune.pipeline import prune
    from onnxprune.report.jsonio import write_json
    from onnxprune.report.summary import render_report, report_to_json

    seconds, evaluations = parse_search_budget(search_budget)
    config = PruneConfig(
        speedup=speedup, sparsity=sparsity, nm=parse_nm(nm) if nm else None,
        layouts=_layouts(layouts), provider=provider, threads=threads,
        shapes=parse_shape_specs(shapes), calib_dir=calib_dir, calib_reader=calib_reader,
        calib_samples=calib_samples, exclude=exclude, seed=seed, dry_run=dry_run,
        best_effort=best_effort, search_budget=seconds, search_evaluations=evaluations,
        cache_dir=cache_dir, sparse_storage=sparse_storage, max_error=max_error,
        max_accuracy_drop=max_accuracy_drop, fidelity_bound=fidelity_bound,
        verify_sessions=verify_sessions, fix=parse_fix_specs(fixes),
    )
    if calib_dir is not None and not Path(calib_dir).exists():
        raise UserError(f"calibration folder not found: {calib_dir}")
    try:
        with progress_bars(quiet) as progress:
            report = prune(input_path, output_path, config, progress=progress)
    except TargetUnreachableError as exc:
        if json_path and exc.report is not None:  # pipelines read why, and what was reachable
            data = report_to_json(exc.report)
            data["refused"] = str(exc)
            write_json(data, json_path)
        raise
    if json_path != "-":
        render_report(console, report)
    if json_path:
        write_json(report_to_json(report), json_path)
    if report.met_target is False:
        console.print("[yellow]the target was not met within the fidelity bound; --best-effort "
                      "wrote the fastest model found within it[/yellow]")
        return TargetUnreachableError.exit_code
    if report.within_bound is False:
        console.print("[yellow]the model breaks the fidelity bound; --best-effort wrote it "
                      "anyway[/yellow]")
        return TargetUnreachableError.exit_code
    return 0


def run_bench(model_a: str, model_b: str, *, shapes, provider, threads, json_path, seconds,
              sessions, console: Console, load) -> None:
    from onnxprune.graph.shapes import bind_input_shapes, graph_inputs
    from onnxprune.latency.measure import bench_sessions
    from onnxprune.report.jsonio import write_json
    from onnxprune.runtime import RuntimeConfig, resolve_provider, synthetic_feed

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
                quiet, console: Console, load) -> None:
    from onnxprune.allocate.budget import problem_from_table
    from onnxprune.graph.candidates import find_candidates
    from onnxprune.graph.shapes import bind_input_shapes
    from onnxprune.latency.table import build_latency_table
    from onnxprune.layouts.base import DENSE
    from onnxprune.layouts.registry import candidate_options, layouts_fast_on
    from onnxprune.report.jsonio import write_json
    from onnxprune.report.profile import render_profile
    from onnxprune.runtime import RuntimeConfig, resolve_provider
    from onnxprune.structures.context import discover_and_attach, layouts_for

    model = load(model_path)
    bound = bind_input_shapes(model, parse_shape_specs(shapes))
    runtime = RuntimeConfig(provider=resolve_provider(provider), threads=threads)
    names = [n for n in (_layouts(layouts) or layouts_fast_on(runtime.provider)) if n != "dense"]
    analysis = find_candidates(model, bound)
    candidates, producers, found = list(analysis.candidates), set(), None
    if "structure" in names:
        analysis, candidates, producers, found = discover_and_attach(model, analysis, candidates)
    options = {c.name: candidate_options(c, layouts_for(c, names, producers))
               for c in candidates}
    with progress_bars(quiet) as progress:
        table = build_latency_table(
            model, analysis, options, runtime, cache_dir=cache_dir,
            progress=lambda done, total, desc: progress("timing layer options", done, total),
        )
    problem = problem_from_table(table, candidates)
    fastest = problem.fastest_options()
    rows = [
        {"name": c.name, "op": c.op, "dense_s": table.option_time(c.name, DENSE),
         "fastest": fastest[c.name].label, "fastest_s": table.option_time(c.name, fastest[c.name]),
         "structure": c.structure.structure.to_json() if c.structure else None,
         "role": ("consumer" if c.structure else "producer" if c.name in producers else "node")}
        for c in candidates
    ]
    data = {
        "model": model_path, "inputs": bound.shapes(), "provider": runtime.provider,
        "threads": threads, "layouts": names, "nodes": rows,
        "dense_total_s": table.dense_total_s, "base_s": table.base_s,
        "predicted_dense_s": table.base_s + table.isolated_dense_s, "gap_s": table.gap_s,
        "scale": table.scale, "amdahl_bound": problem.amdahl_bound,
        "amdahl_bound_spread": problem.bound_spread,
        "unattributed_s": max(table.dense_total_s - table.profile.to_total(table.overhead_s)
                              * sum(table.profile.node_times.values()), 0.0)
        if table.profile else None,
        "structures": [s.to_json() for s in found.structures] if found else [],
        "structures_blocked": [{"producer": b.producer, "reason": b.reason}
                               for b in found.blocked] if found else [],
        "timings_run": table.timings_run, "timings_cached": table.timings_cached,
        "fingerprint": table.fingerprint, "environment": dict(table.environment),
    }
    if json_path != "-":
        render_profile(console, data, bound.notes)
    if json_path:
        write_json(data, json_path)
