"""``onnxprune profile``'s text: where the bound's sessions came from."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from onnxprune.report.profile import render_profile

DATA = Path(__file__).parent / "data" / "profile_report.json"


def _data(sessions: list[float], earlier: int) -> dict:
    """The shipped profile fixture with a measured bound of these sessions."""
    data = json.loads(DATA.read_text())
    data["amdahl_bound_predicted"] = data["amdahl_bound"]
    data["amdahl_bound_measured"] = {"speedup": data["amdahl_bound"], "rel_spread": 0.04,
                                     "sessions": sessions, "sessions_earlier": earlier}
    return data


def _text(data: dict) -> str:
    console = Console(record=True, width=400)
    render_profile(console, data)
    return console.export_text()


def test_a_bound_measured_in_this_run_only_says_so_and_lists_its_sessions():
    text = _text(_data([5.01, 5.02, 5.03], 0))
    assert "3 fresh session pairs: 5.01, 5.02, 5.03;" in text
    assert "measured in this run only" in text


def test_pooled_sessions_are_counted_and_only_this_runs_are_listed():
    text = _text(_data([1.11, 9.99, 5.01, 5.02], 2))
    assert "4 fresh session pairs, 2 of them from earlier runs (1.11–9.99); this run's: " \
           "5.01, 5.02;" in text
    assert "9.99," not in text and "measured in this run only" not in text
