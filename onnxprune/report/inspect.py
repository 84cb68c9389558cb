"""The ``onnxprune inspect`` report: prunable nodes by MACs, and the skipped ones with reasons."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from onnxprune.graph.candidates import GraphAnalysis
from onnxprune.structures.types import StructureAnalysis


def _shape(shape: tuple[int, ...] | list[int]) -> str:
    return "x".join(str(d) for d in shape)


def _macs(macs: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if macs >= scale:
            return f"{macs / scale:.2f}{unit}"
    return str(macs)


def analysis_to_json(analysis: GraphAnalysis, model_path: str,
                     structures: StructureAnalysis | None = None) -> dict:
    """The inspect report as plain data (what ``--json`` writes)."""
    macs = {c.name: c.macs for c in analysis.candidates}
    return {
        "structures": [
            {**s.to_json(), "macs": sum(macs.get(n, 0) for n in (*s.producers, s.consumer))}
            for s in (structures.structures if structures else ())
        ],
        "structures_blocked": [
            {"producer": b.producer, "reason": b.reason, "macs": macs.get(b.producer, 0)}
            for b in (structures.blocked if structures else ())
        ],
        "groups": [
            {**g.to_json(), "macs": sum(macs.get(n, 0) for n in g.nodes)}
            for g in (structures.groups if structures else ())
        ],
        "outside": _outside(analysis, structures) if structures else [],
        "model": model_path,
        "inputs": {i.name: list(i.shape) for i in analysis.bound.inputs},
        "notes": list(analysis.bound.notes),
        "total_macs": analysis.total_macs,
        "prunable_macs": sum(c.macs for c in analysis.candidates),
        "candidates": [
            {
                "name": c.name,
                "op": c.op,
                "nodes": list(c.node_names),
                "weight_source": c.weight_source,
                "weight_via": list(c.weight_via),
                "weight_shape": list(c.weight.shape),
                "activation_shape": list(c.sites[0].input_shape),
                "output_shape": list(c.sites[0].output_shape),
                "macs": c.macs,
                "share": analysis.share(c),
            }
            for c in analysis.candidates
        ],
        "skipped": [
            {"node": s.node, "op": s.op, "reason": s.reason, "macs": s.macs}
            for s in analysis.skipped
        ],
    }


def _outside(analysis: GraphAnalysis, structures: StructureAnalysis) -> list[dict]:
    """Every producer whose output channels are in no structure and no group, heaviest first,
    with the reason its group could not close (else the reason of its plain structure)."""
    macs = {c.name: c.macs for c in analysis.candidates}
    rows = [{"producer": b.producer, "reason": b.reason, "macs": macs.get(b.producer, 0)}
            for b in structures.unstructured]
    return sorted(rows, key=lambda row: -row["macs"])


def render_inspect(console: Console, report: dict) -> None:
    """Print the inspect report as tables."""
    inputs = ", ".join(f"{k}={_shape(v)}" for k, v in report["inputs"].items())
    console.print(f"[bold]{report['model']}[/bold]  inputs: {inputs}")
    for note in [*report["notes"], *(report.get("fixed") or {}).get("notes", [])]:
        console.print(f"[yellow]note:[/yellow] {escape(note)}")
    table = Table(title=f"Prunable nodes ({len(report['candidates'])})", title_justify="left")
    for column in ("node", "op", "weight", "activation", "MACs", "share", "weight from"):
        table.add_column(column, justify="right" if column in ("MACs", "share") else "left",
                         overflow="fold")
    for c in report["candidates"]:
        nodes = c["name"] + (f" (+{len(c['nodes']) - 1} sharing)" if len(c["nodes"]) > 1 else "")
        source = c["weight_source"] + "".join(f" → {v}" for v in c["weight_via"])
        table.add_row(nodes, c["op"], _shape(c["weight_shape"]), _shape(c["activation_shape"]),
                      _macs(c["macs"]), f"{c['share']:.1%}", source)
    console.print(table)
    total, prunable = report["total_macs"], report["prunable_macs"]
    share = prunable / total if total else 0.0
    console.print(f"prunable MACs: {_macs(prunable)} of {_macs(total)} ({share:.1%})")
    structures = report.get("structures") or []
    if structures:
        listing = Table(title=f"Channel structures ({len(structures)}): pruned whole, from "
                              "producer to consumer", title_justify="left")
        for column in ("kind", "producers -> consumer", "width", "channel", "ops between",
                       "MACs"):
            listing.add_column(column, overflow="fold")
        for item in structures:
            listing.add_row(item["kind"], f"{', '.join(item['producers'])} -> {item['consumer']}",
                            str(item["width"]), f"{item['channel_size']} col",
                            str(len(item["members"])), _macs(item["macs"]))
        console.print(listing)
    groups = report.get("groups") or []
    if groups:
        listing = Table(title=f"Coupled groups ({len(groups)}): channels shared across residual "
                              "Adds, consumers, Concats and Splits, pruned together (one width, "
                              "decided at the first consumer)", title_justify="left")
        for column in ("kind", "producers", "consumers", "width", "couplers", "MACs"):
            listing.add_column(column, overflow="fold")
        for item in groups:
            listing.add_row(item["kind"], ", ".join(item["producers"]),
                            ", ".join(item["consumers"]), str(item["width"]),
                            str(len(item["couplers"])), _macs(item["macs"]))
        console.print(listing)
    outside = report.get("outside") or []
    if outside:
        console.print(f"no structure or group from ({len(outside)}), heaviest first:")
        for item in outside:
            console.print(f"  {item['producer']}: {item['reason']}", markup=False)
    if report["skipped"]:
        skipped = Table(title=f"Not pruned ({len(report['skipped'])})", title_justify="left")
        for column in ("node", "op", "MACs", "reason"):
            skipped.add_column(column, overflow="fold")
        for s in report["skipped"]:
            skipped.add_row(s["node"], s["op"], _macs(s["macs"]) if s["macs"] else "-",
                            s["reason"])
        console.print(skipped)
    if not report["candidates"]:
        console.print(
            "[yellow]no prunable node found[/yellow]: nothing in this model can be pruned"
        )
