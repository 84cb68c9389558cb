"""The HTML pages: what a person checks is on the page, the page is self-contained and escaped.

The fixtures are real JSON reports (``prune --json`` of the shipped digits CNN at 2x, ``profile
--json`` of the digits MLP), so the pages are tested on the shapes the CLI really produces.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from onnxprune.common.errors import UserError
from onnxprune.report.html import (
    render_profile_html,
    render_prune_html,
    time_budget,
    write_html,
)
from onnxprune.report.svgchart import BarRow, paired_bar_chart

DATA = Path(__file__).parent / "data"


@pytest.fixture
def prune_data() -> dict:
    return json.loads((DATA / "prune_report.json").read_text())


@pytest.fixture
def profile_data() -> dict:
    return json.loads((DATA / "profile_report.json").read_text())


def text_of(page: str) -> str:
    """Visible text, whitespace collapsed (tags dropped), for 'is this value on the page'."""
    return " ".join(re.sub(r"<[^>]+>", " ", page).split())


def assert_self_contained(page: str) -> None:
    # No network: no external stylesheet, script, image or font; the only URL is SVG's namespace.
    assert "<script" not in page and "<link" not in page and "src=" not in page
    assert re.findall(r"https?://[^\s\"']+", page) == ["http://www.w3.org/2000/svg"] * \
        page.count("<svg")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


def test_prune_page_has_the_headline_and_every_section(prune_data):
    page = render_prune_html(prune_data)
    assert_self_contained(page)
    text = text_of(page)
    m = prune_data["measured_speedup"]
    # Headline: target, measured speedup with its spread, prediction, Amdahl bound, fidelity.
    assert "Done (exit 0)" in text
    assert "2x" in text and f"{m['speedup']:.2f}x" in text
    assert f"lower quartile {m['speedup_low']:.2f}x" in text
    assert f"{m['speedup_min']:.2f}–{m['speedup_max']:.2f}x" in text
    assert f"{len(m['sessions'])} fresh sessions" in text
    assert f"{prune_data['amdahl_bound']:.2f}x" in text
    assert f"{prune_data['predicted_speedup']:.2f}x" in text
    assert f"{prune_data['fidelity']['relative_error']:.3f}" in text and "within the bound" in text
    # Fidelity per output, every layer with its layout label, rounds, calibration, fingerprint.
    for output in prune_data["fidelity"]["outputs"]:
        assert output["name"] in text
    for layer in prune_data["layers"]:
        assert layer["name"] in text and layer["label"] in text
    assert page.count('class="bar-row"') == len(prune_data["layers"])
    rounds = re.search(r'<table class="rounds">.*?</table>', page).group(0)
    assert rounds.count("<tr>") == len(prune_data["rounds"]) + 1
    assert prune_data["calibration"]["source"] in text
    assert prune_data["fingerprint"] in text
    assert prune_data["structures_blocked"][0]["reason"].replace("'", "&#x27;") in page


def test_time_budget_is_biggest_first_and_names_why(prune_data):
    data = copy.deepcopy(prune_data)
    data["not_pruned"] = [{"node": "small", "op": "MatMul", "reason": "shared weight", "macs": 10},
                          {"node": "big", "op": "Conv", "reason": "excluded by --exclude",
                           "macs": 1000}]
    items = time_budget(data)
    timed = [t for _, _, t, _, _ in items if t is not None]
    assert timed == sorted(timed, reverse=True) and len(timed) == 2  # kept-dense node + the rest
    assert [w for w, *_ in items[-2:]] == ["big", "small"]  # untimed, by MACs
    rest = next(item for item in items if item[0] == "rest of the graph")
    layers_dense = sum(layer["time_dense_s"] for layer in data["layers"])
    assert rest[2] == pytest.approx(data["measured_speedup"]["time_a_s"] - layers_dense)
    assert all(reason for *_, reason in items)
    text = text_of(render_prune_html(data))
    assert text.index("big") < text.index("small") and "excluded by --exclude" in text
    # With the latency table's fixed part in the report, that is the rest (same scale as nodes).
    data["dense_time"] = {"total_s": 3e-3, "base_s": 4e-4}
    rest = next(item for item in time_budget(data) if item[0] == "rest of the graph")
    assert rest[2] == pytest.approx(4e-4)


def test_refused_and_dry_run_pages_say_so(prune_data):
    refused = {**prune_data, "written": False, "output": None, "measured_speedup": None,
               "refused": "2x is reachable only beyond the fidelity bound <0.02>"}
    page = render_prune_html(refused)
    assert "Refused (exit 3)" in text_of(page) and "not measured" in text_of(page)
    assert "&lt;0.02&gt;" in page and "<0.02>" not in page  # escaped, not markup
    dry = {**prune_data, "written": False, "output": None, "measured_speedup": None,
           "fidelity": None, "fidelity_reason": "no calibration data", "calibration": None,
           "rounds": []}
    text = text_of(render_prune_html(dry))
    assert "Dry run" in text and "no calibration data" in text and "data-free proxy" in text


def test_node_names_are_escaped_everywhere(prune_data):
    data = copy.deepcopy(prune_data)
    data["layers"][0]["name"] = "<script>alert(1)</script>"
    page = render_prune_html(data)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_profile_page_has_every_node_and_the_bound(profile_data):
    page = render_profile_html(profile_data, notes=["dims defaulted to 1"])
    assert_self_contained(page)
    text = text_of(page)
    assert f"{profile_data['amdahl_bound']:.2f}x" in text
    assert "dims defaulted to 1" in text and profile_data["fingerprint"] in text
    for row in profile_data["nodes"]:
        assert row["name"] in text
    assert page.count('class="bar-row"') == len(profile_data["nodes"])
    for blocked in profile_data["structures_blocked"]:
        assert blocked["producer"] in text


def test_write_html_is_atomic_and_readable(tmp_path, prune_data):
    target = tmp_path / "sub" / "report.html"
    write_html(render_prune_html(prune_data), target)
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert target.stat().st_mode & 0o044 == 0o044  # readable by others, not mkstemp's 0600
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temp file left
    with pytest.raises(UserError, match="--html needs a file path"):
        write_html("<html></html>", "-")


def test_chart_scales_bars_and_cuts_long_labels():
    svg = paired_bar_chart([BarRow("a" * 80, 2e-3, 1e-3, "block"), BarRow("b", 1e-3, -5e-4, "x")],
                           before_name="dense", after_name="after", width=900)
    widths = [float(w) for w in re.findall(r'<rect x="\d+(?:\.\d+)?" y="[\d.]+" width="([\d.]+)"'
                                           r' height="11"', svg)]
    assert widths[0] == pytest.approx(2 * widths[1]) and widths[1] == pytest.approx(widths[2])
    assert widths[3] == 1.0  # a negative "after" (a chain's saving) is drawn at zero
    assert "a" * 80 in svg and ("a" * 29 + "…") in svg  # full name in the tooltip, cut on screen
