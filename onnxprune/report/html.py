"""Self-contained HTML pages for ``prune --html`` and ``profile --html``.

A person reads this page instead of the JSON, so it leads with what they check — the target, the
measured speedup with its spread over fresh sessions, fidelity per output against the bound, the
Amdahl bound — then shows where the time went. The page is built from the JSON data (the dicts
``report_to_json`` and ``run_profile`` produce), so a saved ``--json`` file renders the same. It
has no external CSS, JS, fonts or images: charts are inline SVG (see ``svgchart``), so it opens
offline, from a CI artifact, or attached to an email.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path

from onnxprune.common.errors import UserError
from onnxprune.report.svgchart import BarRow, paired_bar_chart

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto;
       max-width: 1000px; padding: 0 16px; color: #1d2733; line-height: 1.4; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px;
     border-bottom: 1px solid #dde3e9; padding-bottom: 4px; }
.sub { color: #5b6875; margin-top: 0; }
.verdict { padding: 10px 14px; border-radius: 6px; font-weight: 600; margin: 14px 0; }
.ok { background: #e3f5e8; color: #145c2c; } .bad { background: #fde8e6; color: #8a1c12; }
.info { background: #eef3f8; color: #23405f; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #dde3e9; border-radius: 6px; padding: 10px 14px; min-width: 150px;
        flex: 1; }
.card .k { font-size: 12px; color: #5b6875; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 24px; font-weight: 650; } .card .d { font-size: 12px; color: #5b6875; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin: 8px 0; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #edf0f3;
         vertical-align: top; }
th { background: #f5f7f9; white-space: nowrap; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 12px; background: #f5f7f9; padding: 1px 4px; border-radius: 3px; }
.chart { max-width: 100%; height: auto; } .muted { color: #5b6875; font-size: 12px; }
"""


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.3f}"


def _fmt(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]],
           numeric: Sequence[int] = (), css_class: str = "") -> str:
    """A table; ``numeric`` column indexes are right-aligned. Cells are escaped text."""
    head = "".join(f'<th class="{"n" if i in numeric else ""}">{escape(h)}</th>'
                   for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"n" if i in numeric else ""}">{escape(_fmt(c))}</td>'
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    return f'<table class="{css_class}">{thead}<tbody>{body}</tbody></table>'


def _card(key: str, value: str, detail: str = "", css_id: str = "") -> str:
    ident = f' id="{css_id}"' if css_id else ""
    return (f'<div class="card"{ident}><div class="k">{escape(key)}</div>'
            f'<div class="v">{escape(value)}</div><div class="d">{escape(detail)}</div></div>')


def _page(title: str, body: Sequence[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def _shapes(shapes: dict) -> str:
    return ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in shapes.items())


# ----------------------------------------------------------------------------- prune report

def _verdict(data: dict) -> str:
    if data.get("refused"):
        return f'<div class="verdict bad">Refused (exit 3): {escape(data["refused"])}</div>'
    if not data.get("written"):
        return '<div class="verdict info">Dry run: nothing written.</div>'
    if data.get("met_target") is False:
        return ('<div class="verdict bad">Target not met within the fidelity bound; '
                '--best-effort wrote the fastest model found within it (exit 3).</div>')
    if data.get("within_fidelity_bound") is False:
        return ('<div class="verdict bad">The model breaks the fidelity bound; --best-effort '
                'wrote it anyway (exit 3).</div>')
    return (f'<div class="verdict ok">Done (exit 0): wrote {escape(str(data.get("output")))}'
            '</div>')


def _headline(data: dict) -> str:
    cards = []
    target = data.get("target_speedup")
    cards.append(_card("target", f"{target:g}x" if target else data.get("mode", "–"),
                       f"mode: {data.get('mode')}", "target"))
    measured = data.get("measured_speedup")
    if measured:
        sessions = measured.get("sessions") or []
        cards.append(_card(
            "measured speedup", f"{measured['speedup']:.2f}x",
            f"lower quartile {measured['speedup_low']:.2f}x; {len(sessions)} fresh sessions "
            f"{measured['speedup_min']:.2f}–{measured['speedup_max']:.2f}x; "
            f"{_ms(measured['time_a_s'])} → {_ms(measured['time_b_s'])} ms", "measured"))
    else:
        cards.append(_card("measured speedup", "not measured", "dry run or refused", "measured"))
    predicted = data.get("predicted_speedup")
    cards.append(_card("predicted", "–" if predicted is None else f"{predicted:.2f}x",
                       "from the latency table", "predicted"))
    bound = data.get("amdahl_bound")
    bound_spread = (data.get("amdahl_bound_spread") or 0.0) * (bound or 0.0)
    predicted_bound = data.get("amdahl_bound_predicted")
    cards.append(_card(
        "Amdahl bound", "–" if bound is None else f"{bound:.2f}x",
        f"measured ± {bound_spread:.2f}: every prunable node at its fastest option"
        + (f"; the table alone: {predicted_bound:.2f}x" if predicted_bound else ""), "amdahl"))
    fidelity = data.get("fidelity")
    limit = (data.get("fidelity_bound") or {}).get("max_relative_error")
    if fidelity:
        within = data.get("within_fidelity_bound")
        verdict = "" if within is None else ("within the bound" if within else "BEYOND the bound")
        cards.append(_card("worst output error", f"{fidelity['relative_error']:.3f}",
                           f"bound {_fmt(limit)}; {verdict}", "fidelity"))
        channel_limit = (data.get("fidelity_bound") or {}).get("max_channel_error")
        if fidelity.get("channel_error") is not None:
            cards.append(_card("worst channel error", f"{fidelity['channel_error']:.3f}",
                               f"bound {_fmt(channel_limit)}: each channel against its own "
                               "spread", "channel-error"))
        metric = fidelity.get("metric")
        if metric:
            metric_limit = (data.get("fidelity_bound") or {}).get("max_metric_drop")
            cards.append(_card(str(metric["name"]),
                               f"{metric['dense']:.3f} → {metric['pruned']:.3f}",
                               f"drop {metric['drop']:.3f}, bound {_fmt(metric_limit)}",
                               "metric"))
    else:
        cards.append(_card("fidelity", "not measured", data.get("fidelity_reason") or "",
                           "fidelity"))
    return '<div class="cards">' + "".join(cards) + "</div>"


def _fidelity_section(data: dict) -> list[str]:
    fidelity = data.get("fidelity")
    out = ["<h2>Fidelity per output</h2>"]
    if not fidelity:
        out.append(f"<p>{escape(data.get('fidelity_reason') or 'not measured')}</p>")
        return out
    samples = (data.get("calibration") or {}).get("verify_samples", fidelity.get("samples"))
    out.append(f"<p>On {samples} held-out calibration samples (never used to choose anything): "
               "relative error ‖y − y_dense‖ / ‖y_dense‖ per position.</p>")
    out.append(_table(
        ["output", "positions", "mean error", "p95", "max", "cosine mean", "cosine worst",
         "channel error", "worst channels"],
        [(o["name"], o["positions"], o["relative_error_mean"], o["relative_error_p95"],
          o.get("relative_error_max"), o.get("cosine_mean"), o.get("cosine_min"),
          (o.get("channels") or {}).get("channel_error"), _worst_channels(o.get("channels")))
         for o in fidelity["outputs"]], numeric=range(1, 8), css_class="fidelity"))
    if fidelity.get("accuracy_drop_points") is not None:
        out.append(f"<p>Top-1 accuracy {fidelity['accuracy_dense']:.3f} → "
                   f"{fidelity['accuracy_pruned']:.3f} ({fidelity['accuracy_drop_points']:+.1f} "
                   f"points drop on {fidelity['labelled_samples']} labelled samples).</p>")
    at_target = data.get("fidelity_at_target")
    if at_target:
        out.append(f"<p>At the requested speed the error was {at_target['relative_error']:.3f}, "
                   "beyond the bound.</p>")
    if data.get("fidelity_note"):
        out.append(f'<p class="muted">note: {escape(data["fidelity_note"])}</p>')
    return out


def _worst_channels(channels: dict | None) -> str:
    if not channels or channels.get("axis") is None:
        return "–"
    listed = ", ".join(f"{i} ({e:.2f})" for i, e in zip(channels["worst_channels"],
                                                        channels["worst_channel_errors"],
                                                        strict=True))
    return f"axis {channels['axis']}: {listed}"


def _layers_section(data: dict) -> list[str]:
    layers = sorted(data.get("layers") or [], key=lambda r: -(r.get("time_dense_s") or 0.0))
    out = ["<h2>Per node and structure: time before and after</h2>"]
    if not layers:
        return [*out, "<p>No layer was planned.</p>"]
    rows = [BarRow(
        layer["name"] + (f" (+{len(layer['nodes']) - 1})" if len(layer["nodes"]) > 1 else ""),
        layer.get("time_dense_s") or 0.0, layer.get("time_after_s"),
        f"{layer['label']}" + ("" if layer.get("level") is None or layer["layout"] == "dense"
                               else f" (level {layer['level']:.2f})"))
        for layer in layers]
    out.append(paired_bar_chart(rows, before_name="dense", after_name="after pruning"))
    out.append('<p class="muted">A structure\'s saving counts every node of its chain (producer, '
               "the ops between, this consumer), so its “after” time can reach zero.</p>")
    table_rows = []
    for layer in layers:
        before, after = layer.get("weights_before") or 0, layer.get("weights_after") or 0
        dense, pruned = layer.get("time_dense_s"), layer.get("time_after_s")
        table_rows.append((
            layer["name"], layer["op"], layer["layout"], layer["label"], layer.get("level"),
            f"{1 - after / before:.0%}" if before else "–", layer.get("error"), _ms(dense),
            _ms(pruned), _ms(None if dense is None or pruned is None else dense - pruned)))
    out.append(_table(["node", "op", "layout", "chosen", "level", "removed", "layer error",
                       "dense ms", "after ms", "saves ms"], table_rows,
                      numeric=(4, 5, 6, 7, 8, 9), css_class="layers"))
    return out


def time_budget(data: dict) -> list[tuple[str, str, float | None, int | None, str]]:
    """What was not pruned and why, biggest first: (what, op, seconds, MACs, reason).

    Timed items (nodes kept dense, the rest of the graph) come first by time, then nodes skipped
    before timing by MACs. The rest of the graph is the latency table's fixed part (``dense_time``,
    on the same scale as the nodes' times); a report without it falls back to the measured dense
    time less the prunable nodes' dense times: ops onnxprune does not prune, copies, run overhead.
    """
    timed: list[tuple[str, str, float | None, int | None, str]] = []
    layers = data.get("layers") or []
    for layer in layers:
        if layer.get("layout") == "dense":
            timed.append((layer["name"], layer["op"], layer.get("time_dense_s"), None,
                          "kept dense by the allocation: pruning it cost more fidelity per "
                          "millisecond saved than the nodes that were pruned"))
    measured, dense_time = data.get("measured_speedup"), data.get("dense_time")
    rest = None
    if dense_time:
        rest = dense_time["base_s"]
    elif measured and layers:
        rest = measured["time_a_s"] - sum(layer.get("time_dense_s") or 0.0 for layer in layers)
    if rest is not None:
        timed.append(("rest of the graph", "–", max(rest, 0.0), None,
                      "ops that are not MatMul/Gemm/Conv with a constant weight, copies and run "
                      "overhead: no layout applies (this is what the Amdahl bound leaves)"))
    timed.sort(key=lambda item: -(item[2] or 0.0))
    skipped = sorted(data.get("not_pruned") or [], key=lambda s: -(s.get("macs") or 0))
    return timed + [(s["node"], s["op"], None, s.get("macs"), s["reason"]) for s in skipped]


def _budget_section(data: dict) -> list[str]:
    out = ["<h2>Time budget: what could not be pruned, and why</h2>"]
    items = time_budget(data)
    if items:
        out.append(_table(["what", "op", "dense ms", "MACs", "why"],
                          [(w, op, _ms(t), m, r) for w, op, t, m, r in items],
                          numeric=(2, 3), css_class="budget"))
    else:
        out.append("<p>Every prunable node was pruned.</p>")
    blocked = data.get("structures_blocked") or []
    if blocked:
        out.append("<p>Channel structures not formed (these producers can still take a "
                   "per-node layout):</p>")
        out.append(_table(["producer", "why no structure"],
                          [(b["producer"], b["reason"]) for b in blocked], css_class="blocked"))
    for note in data.get("notes") or []:
        out.append(f'<p class="muted">note: {escape(note)}</p>')
    return out


def _rounds_section(data: dict) -> list[str]:
    rounds = data.get("rounds") or []
    out = ["<h2>Rounds: predicted vs measured</h2>"]
    if not rounds:
        return [*out, "<p>No rounds (not a --speedup run, or refused before measuring).</p>"]
    out.append(_table(
        ["round", "kind", "goal", "predicted", "measured", "measured lower quartile",
         "output error", "accuracy drop", "within bound"],
        [(r.get("round"), r.get("kind"), r.get("goal"), r.get("predicted"), r.get("measured"),
          r.get("measured_low"), r.get("relative_error"), r.get("accuracy_drop_points"),
          r.get("within_bound")) for r in rounds],
        numeric=(2, 3, 4, 5, 6, 7), css_class="rounds"))
    return out


def _key_values(title: str, items: dict, css_class: str) -> list[str]:
    return [f"<h2>{escape(title)}</h2>",
            _table(["", ""], [(k, v) for k, v in items.items()], css_class=css_class)]


def render_prune_html(data: dict) -> str:
    """The prune report page from ``report_to_json``'s dict (plus ``refused`` on exit 3)."""
    title = f"onnxprune: {data.get('input')}"
    body = [f"<h1>{escape(title)}</h1>",
            f'<p class="sub">{escape(str(data.get("input")))} → '
            f'{escape(str(data.get("output") or "(nothing written)"))} · '
            f'{escape(str(data.get("provider")))}, threads {escape(_fmt(data.get("threads")))}'
            f" · inputs {escape(_shapes(data.get('input_shapes') or {}))}</p>",
            _verdict(data), _headline(data)]
    body += _fidelity_section(data) + _layers_section(data) + _budget_section(data)
    body += _rounds_section(data)
    calibration = data.get("calibration")
    body += _key_values("Calibration", calibration, "calibration") if calibration else [
        "<h2>Calibration</h2>", "<p>None: a data-free proxy chose the weights.</p>"]
    if data.get("search"):
        body += _key_values("Search", data["search"], "search")
    bound = data.get("fidelity_bound") or {}
    settings = {
        "mode": data.get("mode"), "target speedup": data.get("target_speedup"),
        "provider": data.get("provider"), "threads": data.get("threads"),
        "input shapes": _shapes(data.get("input_shapes") or {}),
        "fidelity bound (max relative error)": bound.get("max_relative_error"),
        "max accuracy drop (points)": bound.get("max_accuracy_drop_points"),
    }
    body += _key_values("Settings", settings, "settings")
    before, after = data.get("weights_before") or 0, data.get("weights_after") or 0
    facts = {
        "measurement fingerprint": data.get("fingerprint"),
        "prunable weights": f"{before:,} → {after:,}" + (
            f" ({1 - after / before:.1%} removed)" if before else ""),
        "file size": f"{data.get('file_size_before') or 0:,} → "
                     f"{_fmt(data.get('file_size_after'))} bytes",
        "max relative difference vs masked dense":
            data.get("max_relative_difference_vs_masked_dense"),
        "wall time": f"{data.get('wall_s') or 0:.1f} s",
    }
    body += _key_values("Measurement and output", facts, "fingerprint")
    return _page(title, body)


# ----------------------------------------------------------------------------- profile page

def render_profile_html(data: dict, notes: Sequence[str] = ()) -> str:
    """The ``profile --html`` page from ``run_profile``'s data: per-node table and the bound."""
    title = f"onnxprune profile: {data['model']}"
    total = data.get("dense_total_s") or 0.0
    spread = (data.get("amdahl_bound_spread") or 0.0) * data["amdahl_bound"]
    body = [f"<h1>{escape(title)}</h1>",
            f'<p class="sub">inputs {escape(_shapes(data["inputs"]))} · '
            f'{escape(data["provider"])}, threads {escape(_fmt(data.get("threads")))} · '
            f'layouts {escape(", ".join(data["layouts"]))}</p>']
    body += [f'<p class="muted">note: {escape(n)}</p>' for n in notes]
    body.append('<div class="cards">' + "".join([
        _card("Amdahl bound", f"{data['amdahl_bound']:.2f}x", f"measured ± {spread:.2f} (~2 "
              "standard errors)" + (f"; the table alone: {data['amdahl_bound_predicted']:.2f}x"
                                    if data.get("amdahl_bound_predicted") else ""), "amdahl"),
        _card("dense model", f"{_ms(total)} ms", "median over fresh sessions", "total"),
        _card("fixed part", f"{_ms(data['base_s'])} ms",
              f"{data['base_s'] / total:.0%} of the time, not prunable" if total else "",
              "fixed"),
    ]) + "</div>")
    nodes = sorted(data["nodes"], key=lambda r: -r["dense_s"])
    body.append("<h2>Prunable nodes: dense time and the fastest option</h2>")
    if nodes:
        body.append(paired_bar_chart(
            [BarRow(r["name"], r["dense_s"],
                    None if r.get("role") == "producer" else r["fastest_s"], _fastest(r))
             for r in nodes],
            before_name="dense", after_name="fastest option"))
    body.append(_table(
        ["node", "op", "role", "dense ms", "share", "fastest option", "saves ms"],
        [(r["name"], r["op"], r.get("role", "node"), _ms(r["dense_s"]),
          f"{r['dense_s'] / total:.1%}" if total else "–", _fastest(r),
          _ms(r["dense_s"] - r["fastest_s"])) for r in nodes],
        numeric=(3, 4, 6), css_class="nodes"))
    structures = data.get("structures") or []
    if structures:
        body.append(f"<h2>Channel structures ({len(structures)})</h2>")
        body.append(_table(["kind", "producer → consumer", "width", "ops between"],
                           [(s["kind"], s["name"], s["width"], len(s["members"]))
                            for s in structures], numeric=(2, 3), css_class="structures"))
    blocked = data.get("structures_blocked") or []
    if blocked:
        body.append("<h2>Producers without a structure</h2>")
        body.append(_table(["producer", "why"], [(b["producer"], b["reason"]) for b in blocked],
                           css_class="blocked"))
    facts = {
        "whole model (measured)": f"{_ms(total)} ms",
        "fixed part (not prunable)": f"{_ms(data['base_s'])} ms",
        "base + Σ isolated dense nodes": f"{_ms(data['predicted_dense_s'])} ms (gap "
                                         f"{data['gap_s'] * 1e3:+.3f} ms, corrected by "
                                         f"x{data['scale']:.3f})",
        "time not attributed to a node": _ms(data.get("unattributed_s")) + " ms",
        "timings": f"{data['timings_run']} measured, {data['timings_cached']} from cache",
        "measurement fingerprint": data.get("fingerprint"),
        **{f"environment: {k}": v for k, v in (data.get("environment") or {}).items()},
    }
    body += _key_values("Measurement", facts, "fingerprint")
    return _page(title, body)


def _fastest(row: dict) -> str:
    return "shrinks with its structure" if row.get("role") == "producer" else row["fastest"]


def check_html_path(path: str | os.PathLike[str] | None) -> None:
    """Refuse an unusable ``--html`` before a long run, not after it."""
    if path is not None and str(path) == "-":  # stdout already carries the terminal summary
        raise UserError("--html needs a file path ('-' is not supported; --json - is)")


def write_html(text: str, path: str | os.PathLike[str]) -> None:
    """Write the page to ``path`` atomically (temp file + rename): never a half-written page."""
    check_html_path(path)
    from onnxprune.graph.write import write_bytes_atomic

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # 0644: mkstemp's 0600 would hide the page from a web server or a colleague.
    write_bytes_atomic(text.encode("utf-8"), target, mode=0o644)
