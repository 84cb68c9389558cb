"""Inline SVG bar charts for the HTML pages, drawn by hand.

Why not matplotlib: the HTML report must work wherever onnxprune runs (a CI box with only the core
install), must not reach the network, and its labels should stay text a browser can search and a
test can read. A paired horizontal bar chart is a few dozen lines of SVG, so the report needs no
plotting dependency at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

BEFORE_COLOR = "#9aa5b1"
AFTER_COLOR = "#2f80ed"


@dataclass(frozen=True)
class BarRow:
    """One row of a paired bar chart: a before and an after value (seconds) and a note.

    ``after`` may be negative (a structure's saving counts its whole chain, which can exceed the
    consumer's own time); the bar is then drawn at zero and the note carries the number.
    """

    label: str
    before: float
    after: float | None
    note: str = ""


def _fit(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def paired_bar_chart(rows: Sequence[BarRow], *, before_name: str, after_name: str,
                     width: int = 960, label_chars: int = 30, note_chars: int = 38) -> str:
    """An ``<svg>`` with one row per item: the before bar (grey) above the after bar (blue).

    Values are seconds and shown in milliseconds. Labels longer than ``label_chars`` are cut with
    an ellipsis; the full text stays in a ``<title>`` tooltip.
    """
    label_w, note_w, row_h, top, bottom = label_chars * 7 + 12, note_chars * 6.6 + 12, 30, 34, 26
    plot_w = max(width - label_w - note_w, 160)
    peak = max([r.before for r in rows] + [r.after or 0.0 for r in rows] + [1e-12])
    height = top + row_h * len(rows) + bottom
    scale = plot_w / peak
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'font-family="system-ui, sans-serif" font-size="12">',
        f'<rect x="{label_w}" y="8" width="12" height="10" fill="{BEFORE_COLOR}"/>'
        f'<text x="{label_w + 16}" y="17">{escape(before_name)}</text>'
        f'<rect x="{label_w + 150}" y="8" width="12" height="10" fill="{AFTER_COLOR}"/>'
        f'<text x="{label_w + 166}" y="17">{escape(after_name)}</text>',
    ]
    for tick in _ticks(peak):
        x = label_w + tick * scale
        parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" '
                     f'y2="{height - bottom + 2}" stroke="#e3e7eb"/>'
                     f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle" fill="#555">'
                     f'{tick * 1e3:g} ms</text>')
    for i, row in enumerate(rows):
        y = top + i * row_h
        after = max(row.after or 0.0, 0.0)
        parts.append(
            f'<g class="bar-row"><title>{escape(row.label)}: {row.before * 1e3:.3f} ms'
            + ("" if row.after is None else f" -> {row.after * 1e3:.3f} ms")
            + f'{" — " + escape(row.note) if row.note else ""}</title>'
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">'
            f'{escape(_fit(row.label, label_chars))}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{max(row.before * scale, 1):.1f}" '
            f'height="11" fill="{BEFORE_COLOR}"/>'
        )
        if row.after is not None:
            parts.append(f'<rect x="{label_w}" y="{y + 15}" width="{max(after * scale, 1):.1f}"'
                         f' height="11" fill="{AFTER_COLOR}"/>')
        parts.append(f'<text x="{width - note_w + 8}" y="{y + 17}" fill="#333">'
                     f'{escape(_fit(row.note, note_chars))}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _ticks(peak: float) -> list[float]:
    """Three to six round tick values from 0 to ``peak`` (seconds)."""
    step = 10 ** _floor_log10(peak / 4)
    for factor in (1, 2, 5, 10):
        if peak / (step * factor) <= 5:
            step *= factor
            break
    return [k * step for k in range(int(peak / step) + 1)]


def _floor_log10(value: float) -> int:
    exponent = 0
    while value >= 10:
        value, exponent = value / 10, exponent + 1
    while value < 1:
        value, exponent = value * 10, exponent - 1
    return exponent
