"""The pruning report: a terminal summary and the same as JSON, leading with what a user checks.

First the contract — measured speedup with its spread across fresh sessions, next to the target,
the prediction and the Amdahl bound; fidelity per output on held-out calibration samples, next to
the bound — then the per-node detail.
"""

from __future__ import annotations

from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from onnxprune.fidelity import describe
from onnxprune.layouts.registry import option_label
from onnxprune.pipeline.result import Report


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def report_to_json(report: Report) -> dict:
    """Plain data for ``--json``: same content as the terminal summary, plus the fingerprint."""
    fidelity = report.fidelity.to_json() if report.fidelity else None
    data = {
        "input": report.input_path,
        "output": report.output_path if report.written else None,
        "written": report.written,
        "mode": report.mode,
        "target_speedup": report.target_speedup,
        "met_target": report.met_target,
        "measured_speedup": report.measured.to_json() if report.measured else None,
        "fidelity": fidelity,
        "fidelity_reason": report.fidelity_note if fidelity is None else None,
        "fidelity_note": report.fidelity_note if fidelity is not None else None,
        "fidelity_bound": report.bound.to_json() if report.bound else None,
        "within_fidelity_bound": report.within_bound,
        "fidelity_at_target": report.at_target.to_json() if report.at_target else None,
        "predicted_speedup": report.predicted_speedup,
        "amdahl_bound": report.amdahl_bound,
        "amdahl_bound_spread": report.amdahl_bound_spread,
        "amdahl_bound_predicted": report.amdahl_bound_predicted,
        "provider": report.provider,
        "threads": report.threads,
        "input_shapes": {k: list(v) for k, v in report.input_shapes.items()},
        "rounds": report.rounds,
        "calibration": report.calibration,
        "search": report.search,
        "error_feedback": report.error_feedback,
        "recovery": report.recovery,
        "max_relative_difference_vs_masked_dense": report.exactness,
        "weights_before": sum(layer.weights_before for layer in report.layers),
        "weights_after": sum(layer.weights_after for layer in report.layers),
        "file_size_before": report.size_before,
        "file_size_after": report.size_after if report.written else None,
        "fingerprint": report.fingerprint,
        "dense_time": report.dense_time,
        "wall_s": report.wall_s,
        "notes": report.notes,
        "structures": report.structures,
        "structures_blocked": report.structures_blocked,
        "layers": [
            {
                "name": layer.name, "op": layer.op, "nodes": list(layer.nodes),
                **layer.option.to_json(), "label": option_label(layer.option), "error": layer.err,
                "time_dense_s": layer.time_dense_s, "time_after_s": layer.time_after_s,
                "weights_before": layer.weights_before, "weights_after": layer.weights_after,
            }
            for layer in report.layers
        ],
        "not_pruned": [asdict(s) for s in report.skipped],
    }
    return data


def _layer_table(report: Report) -> Table:
    table = Table(title="Per node", title_justify="left")
    for column, justify in (("node", "left"), ("op", "left"), ("layout", "left"),
                            ("removed", "right"), ("layer error", "right"),
                            ("dense ms", "right"), ("saves ms", "right")):
        table.add_column(column, justify=justify, overflow="fold")
    for layer in report.layers:
        removed = 1 - layer.weights_after / layer.weights_before if layer.weights_before else 0
        saved = (None if layer.time_dense_s is None or layer.time_after_s is None
                 else layer.time_dense_s - layer.time_after_s)
        table.add_row(
            layer.name + (f" (+{len(layer.nodes) - 1})" if len(layer.nodes) > 1 else ""),
            layer.op, option_label(layer.option), f"{removed:.0%}", f"{layer.err:.4f}",
            _ms(layer.time_dense_s), _ms(saved),
        )
    table.caption = ("a structure's saving counts every node of its chain (producer, the ops "
                     "between, this consumer)") if any(
        layer.option.layout == "structure" for layer in report.layers) else None
    return table


def _fidelity_lines(report: Report) -> list[str]:
    fid = report.fidelity
    if fid is None:
        return [f"[bold]fidelity:[/bold] {report.fidelity_note or 'not measured'}"]
    bound = report.bound

    def limit(value: float | None) -> str:
        if bound is None:
            return "no bound (--no-fidelity-bound)"
        return "not bounded" if value is None else f"bound {value:g}"

    verdict = "" if report.within_bound is None else (
        " [green]within the bound[/green]" if report.within_bound else
        " [red]BEYOND the bound[/red]")
    samples = (report.calibration or {}).get("verify_samples", fid.samples)
    headline = (f"relative output error {fid.error:.3f} "
                f"({limit(bound.max_error if bound else None)}), channel error "
                f"{fid.channel_error:.3f} ({limit(bound.max_channel_error if bound else None)})")
    if fid.metric is not None:
        headline += (f", {fid.metric.name} {fid.metric.dense:.3f} -> {fid.metric.pruned:.3f} "
                     f"(drop {fid.metric.drop:.3f}, "
                     f"{limit(bound.max_metric_drop if bound else None)})")
    lines = [f"[bold]fidelity[/bold] on {samples} held-out calibration samples: "
             f"{headline}{verdict}"]
    for out in fid.outputs:
        cosine = "" if out.cosine_mean is None else (
            f", cosine {out.cosine_mean:.4f} (worst position {out.cosine_min:.3f})")
        channels = "" if out.channels is None else (
            f"; channel error {out.channels.error:.3f} (worst: {out.channels.where()})")
        lines.append(f"  output {out.name}: relative error {out.error_mean:.3f} mean, "
                     f"{out.error_p95:.3f} p95 over {out.positions} positions{cosine}{channels}")
    if fid.accuracy_drop is not None:
        limit = ("" if not bound or bound.max_accuracy_drop is None
                 else f", bound {bound.max_accuracy_drop:g} points")
        lines.append(f"  accuracy {fid.accuracy_dense:.3f} -> {fid.accuracy_pruned:.3f} "
                     f"({fid.accuracy_drop:+.1f} points drop on {fid.labelled} labelled samples; "
                     f"one sample = {100 / fid.labelled:.1f} points{limit})")
    if report.at_target is not None:
        broken = "; ".join(bound.violations(report.at_target)) if bound else ""
        lines.append(f"  at the requested {report.target_speedup:g}x the allocation broke the "
                     f"bound: {broken or describe(report.at_target)}")
    if report.fidelity_note:
        lines.append(f"  note: {report.fidelity_note}")
    return lines


def render_report(console: Console, report: Report) -> None:
    """Print the per-node table and not-pruned list, then the headline: speed and fidelity."""
    console.print(_layer_table(report))
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
    if report.search:
        s = report.search
        console.print(f"SPDY search: {s['evaluations']} allocations scored on "
                      f"{s.get('samples', '?')} calibration samples, "
                      f"{s.get('measure', 'relative output error')} "
                      f"{s['loss_plain_dp']:.4g} (plain DP) -> {s['loss']:.4g}")
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    if report.measured is not None:
        m = report.measured
        target = f" (target {report.target_speedup:g}x)" if report.target_speedup else ""
        extra = []
        if report.predicted_speedup is not None:
            extra.append(f"predicted {report.predicted_speedup:.2f}x")
        if report.amdahl_bound is not None:
            extra.append(f"Amdahl bound {report.amdahl_bound:.2f}x"
                         + (f" ± {report.amdahl_bound * report.amdahl_bound_spread:.2f}"
                            if report.amdahl_bound_spread else ""))
        console.print(
            f"[bold]measured speedup: {m.speedup:.2f}x[/bold]{target}  "
            f"[{len(m.sessions)} fresh sessions: {m.speedup_min:.2f}-{m.speedup_max:.2f}, "
            f"lower quartile {m.speedup_low:.2f}x; {m.time_a_s * 1e3:.3f} ms -> "
            f"{m.time_b_s * 1e3:.3f} ms]" + (f"  {', '.join(extra)}" if extra else "")
        )
    elif report.amdahl_bound is not None:
        spread = report.amdahl_bound * (report.amdahl_bound_spread or 0.0)
        console.print(f"reachable speedup (Amdahl bound, measured): {report.amdahl_bound:.2f}x"
                      f" ± {spread:.2f}")
        if report.predicted_speedup is not None:
            console.print(f"predicted speedup: {report.predicted_speedup:.2f}x")
    for line in _fidelity_lines(report):
        console.print(line)
    if report.written:
        console.print(f"wrote {report.output_path} ({report.size_before / 1024:.0f} KiB -> "
                      f"{report.size_after / 1024:.0f} KiB) in {report.wall_s:.1f} s")
    elif report.output_path is None:
        console.print(f"dry run: nothing written ({report.wall_s:.1f} s)")
