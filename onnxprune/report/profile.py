"""The ``onnxprune profile`` report: per-node times, prediction quality, the reachable speedup."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table


def render_profile(console: Console, data: dict, notes: Sequence[str] = ()) -> None:
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    shapes = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in data["inputs"].items())
    console.print(f"[bold]{data['model']}[/bold]  inputs: {shapes}; {data['provider']}, threads "
                  f"{data['threads'] or 'default'}; layouts: {', '.join(data['layouts'])}")
    total = data["dense_total_s"]
    table = Table(title="Prunable nodes", title_justify="left")
    for column in ("node", "op", "role", "dense ms", "share", "fastest option", "saves ms"):
        table.add_column(column, justify="left" if column in ("node", "op", "role",
                                                              "fastest option")
                         else "right", overflow="fold")
    for row in sorted(data["nodes"], key=lambda r: -r["dense_s"]):
        role = row.get("role", "node")
        fastest = row["fastest"] if role != "producer" else "shrinks with its structure"
        table.add_row(row["name"], row["op"], role, f"{row['dense_s'] * 1e3:.3f}",
                      f"{row['dense_s'] / total:.1%}" if total else "-", fastest,
                      f"{(row['dense_s'] - row['fastest_s']) * 1e3:.3f}")
    console.print(table)
    structures = data.get("structures") or []
    if structures:
        listing = Table(title=f"Channel structures ({len(structures)})", title_justify="left")
        for column in ("kind", "producer -> consumer", "width", "ops between"):
            listing.add_column(column, overflow="fold")
        for item in structures:
            listing.add_row(item["kind"], item["name"], str(item["width"]),
                            str(len(item["members"])))
        console.print(listing)
    for blocked in data.get("structures_blocked") or []:
        console.print(f"  no structure from {blocked['producer']}: {blocked['reason']}",
                      markup=False)
    console.print(
        f"whole model (measured): {total * 1e3:.3f} ms; fixed part (not prunable): "
        f"{data['base_s'] * 1e3:.3f} ms ({data['base_s'] / total:.0%})" if total else ""
    )
    console.print(
        f"base + Σ isolated dense nodes predicts {data['predicted_dense_s'] * 1e3:.3f} ms "
        f"(gap {data['gap_s'] * 1e3:+.3f} ms, corrected by x{data['scale']:.3f})"
    )
    if total and data.get("unattributed_s") is not None:
        console.print(
            f"time the profiler could not attribute to any node (layout reorders, copies, "
            f"run overhead): {data['unattributed_s'] * 1e3:.3f} ms "
            f"({data['unattributed_s'] / total:.0%}), counted as not prunable"
        )
    spread = data.get("amdahl_bound_spread") or 0.0
    measured = data.get("amdahl_bound_measured")
    if measured:
        console.print(f"[bold]maximum reachable speedup (Amdahl bound): "
                      f"{data['amdahl_bound']:.2f}x ± {data['amdahl_bound'] * spread:.2f}[/bold] "
                      f"(measured: every node at its fastest option, timed against dense in "
                      f"{_sessions(measured)}; ± ~2 standard errors; the latency table alone "
                      f"predicts {data['amdahl_bound_predicted']:.2f}x)")
        if not measured.get("sessions_earlier"):
            console.print("  measured in this run only: on a shared machine the bound can move "
                          "between runs by more than its spread; profiling again pools the runs")
    else:
        console.print(f"[bold]maximum reachable speedup (Amdahl bound): "
                      f"{data['amdahl_bound']:.2f}x ± {data['amdahl_bound'] * spread:.2f}[/bold] "
                      "(predicted by the latency table; ± ~2 standard errors)")
    console.print(f"timings: {data['timings_run']} measured, {data['timings_cached']} from cache")


def _sessions(measured: dict) -> str:
    """``N fresh session pairs: …``, saying how many came from earlier runs (kept in the latency
    cache) and listing this run's."""
    sessions = [float(x) for x in measured["sessions"]]
    earlier = int(measured.get("sessions_earlier", 0))
    now = ", ".join(f"{x:.2f}" for x in sessions[earlier:])
    if not earlier:
        return f"{len(sessions)} fresh session pairs: {now}"
    return (f"{len(sessions)} fresh session pairs, {earlier} of them from earlier runs "
            f"({min(sessions[:earlier]):.2f}–{max(sessions[:earlier]):.2f}); this run's: {now}")
