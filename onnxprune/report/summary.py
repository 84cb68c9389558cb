"""The pruning report: a terminal summary (per node and totals) and the same as JSON."""

from __future__ import annotations

from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from onnxprune.pipeline import Report


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def report_to_json(report: Report) -> dict:
    """Plain data for ``--json``: same content as the terminal summary, plus the fingerprint."""
    data = {
        "input": report.input_path,
        "output": report.output_path if report.written else None,
        "written": report.written,
        "mode": report.mode,
        "target_speedup": report.target_speedup,
        "met_target": report.met_target,
        "provider": report.provider,
        "threads": report.threads,
        "input_shapes": {k: list(v) for k, v in report.input_shapes.items()},
        "predicted_speedup": report.predicted_speedup,
        "measured_speedup": report.measured.to_json() if report.measured else None,
        "amdahl_bound": report.amdahl_bound,
        "rounds": report.rounds,
        "calibration": report.calibration,
        "search": report.search,
        "quality": report.quality,
        "max_relative_difference_vs_masked_dense": report.exactness,
        "weights_before": sum(layer.weights_before for layer in report.layers),
        "weights_after": sum(layer.weights_after for layer in report.layers),
        "file_size_before": report.size_before,
        "file_size_after": report.size_after if report.written else None,
        "fingerprint": report.fingerprint,
        "wall_s": report.wall_s,
        "notes": report.notes,
        "layers": [
            {
                "name": layer.name, "op": layer.op, "nodes": list(layer.nodes),
                **layer.option.to_json(), "label": layer.option.label, "error": layer.err,
                "time_dense_s": layer.time_dense_s, "time_after_s": layer.time_after_s,
                "weights_before": layer.weights_before, "weights_after": layer.weights_after,
            }
            for layer in report.layers
        ],
        "not_pruned": [asdict(s) for s in report.skipped],
    }
    return data


def render_report(console: Console, report: Report) -> None:
    """Print the per-node table, the totals and the notes."""
    table = Table(title="Per node", title_justify="left")
    for column, justify in (("node", "left"), ("op", "left"), ("layout", "left"),
                            ("removed", "right"), ("layer error", "right"),
                            ("dense ms", "right"), ("after ms", "right")):
        table.add_column(column, justify=justify, overflow="fold")
    for layer in report.layers:
        removed = 1 - layer.weights_after / layer.weights_before if layer.weights_before else 0
        table.add_row(
            layer.name + (f" (+{len(layer.nodes) - 1})" if len(layer.nodes) > 1 else ""),
            layer.op, layer.option.label, f"{removed:.0%}", f"{layer.err:.4f}",
            _ms(layer.time_dense_s), _ms(layer.time_after_s),
        )
    console.print(table)
    if report.skipped:
        console.print(f"not pruned ({len(report.skipped)}):")
        for skip in report.skipped:
            console.print(f"  {skip.node} ({skip.op}): {skip.reason}", markup=False)
    before = sum(layer.weights_before for layer in report.layers)
    after = sum(layer.weights_after for layer in report.layers)
    if before:
        console.print(
            f"prunable weights: {before:,} -> {after:,} ({1 - after / before:.1%} removed)"
        )
    if report.quality:
        q = report.quality
        line = f"calibration output nMSE vs dense: {q['output_nmse']:.4g}"
        if "accuracy_dense" in q:
            line += (f"; calibration accuracy {q['accuracy_dense']:.3f} -> "
                     f"{q['accuracy_pruned']:.3f} ({q['labelled_samples']} samples)")
        console.print(line)
    if report.search:
        s = report.search
        console.print(f"SPDY search: {s['evaluations']} allocations scored, calibration loss "
                      f"{s['loss_plain_dp']:.4g} (plain DP) -> {s['loss']:.4g}")
    if report.amdahl_bound is not None:
        console.print(f"reachable speedup (Amdahl bound): {report.amdahl_bound:.2f}x")
    if report.predicted_speedup is not None:
        console.print(f"predicted speedup: {report.predicted_speedup:.2f}x")
    if report.measured is not None:
        m = report.measured
        target = f" (target {report.target_speedup:g}x)" if report.target_speedup else ""
        console.print(
            f"[bold]measured speedup: {m.speedup_median:.2f}x[/bold]{target}  "
            f"[{m.speedup_q25:.2f}-{m.speedup_q75:.2f} interquartile over {m.pairs} interleaved "
            f"pairs; {m.time_a_s * 1e3:.3f} ms -> {m.time_b_s * 1e3:.3f} ms]"
        )
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    if report.written:
        console.print(f"wrote {report.output_path} ({report.size_before / 1024:.0f} KiB -> "
                      f"{report.size_after / 1024:.0f} KiB) in {report.wall_s:.1f} s")
    elif report.output_path is None:
        console.print(f"dry run: nothing written ({report.wall_s:.1f} s)")
