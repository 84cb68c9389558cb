"""Progress output: plain lines off a terminal, bars on one, nothing with --quiet, JSON lines."""

from __future__ import annotations

import io
import json

from onnxprune.common.progress import format_seconds, plain_line, progress_reporter


class FakeClock:
    """A clock the test moves by hand, so lines and ETAs are deterministic."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_at_start_every_tenth_and_end_with_an_eta():
    stream, clock = io.StringIO(), FakeClock()
    with progress_reporter(stream=stream, tty=False, clock=clock) as progress:
        for done in range(0, 41):
            progress("timing layer options", done, 40)
            clock.now += 0.5
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert lines[0] == "onnxprune: timing layer options (40 steps) ..."
    assert lines[-1] == "onnxprune: timing layer options: done (40/40, 20s)"
    middle = lines[1:-1]
    # One line per 10% (4 of 40 steps), never one per step.
    assert 8 <= len(middle) <= 10
    assert middle[0] == "onnxprune: timing layer options: 4/40 (10%), 2s, ETA 18s"
    assert all("ETA" in line for line in middle)


def test_open_ended_stage_reports_every_five_seconds_and_ends_when_the_next_starts():
    stream, clock = io.StringIO(), FakeClock()
    with progress_reporter(stream=stream, tty=False, clock=clock) as progress:
        for n in range(1, 13):  # a time-boxed search: total unknown (0), 1 s per evaluation
            progress("searching sensitivities", n, 0)
            clock.now += 1.0
        progress("measuring speedup", 0, 2)
        progress("measuring speedup", 2, 2)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "onnxprune: searching sensitivities ..."
    assert lines[1] == "onnxprune: searching sensitivities: 6 so far, 5s"
    assert lines[2] == "onnxprune: searching sensitivities: 11 so far, 10s"
    assert lines[3] == "onnxprune: searching sensitivities: done (12 steps, 12s)"
    assert lines[4:] == ["onnxprune: measuring speedup (2 steps) ...",
                         "onnxprune: measuring speedup: done (2/2, 0s)"]


def test_a_stage_run_again_is_reported_again():
    stream, clock = io.StringIO(), FakeClock()
    with progress_reporter(stream=stream, tty=False, clock=clock) as progress:
        for _ in range(2):  # the contract loop measures once per round
            progress("measuring speedup", 0, 3)
            progress("measuring speedup", 3, 3)
            progress("measuring speedup", 3, 3)  # a repeated completion is not a new stage
    lines = stream.getvalue().splitlines()
    assert lines.count("onnxprune: measuring speedup (3 steps) ...") == 2
    assert len(lines) == 4


def test_quiet_prints_nothing_but_still_writes_the_json_log(tmp_path):
    stream, clock, log = io.StringIO(), FakeClock(), tmp_path / "log.jsonl"
    with progress_reporter(quiet=True, log_json=log, stream=stream, tty=False,
                           clock=clock) as progress:
        for done in range(0, 5):
            progress("solving layer options", done, 4)
            clock.now += 2.0
    assert stream.getvalue() == ""
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["event"] for r in records][0] == "start"
    assert [r["event"] for r in records][-1] == "end"
    assert {r["stage"] for r in records} == {"solving layer options"}
    progress_records = [r for r in records if r["event"] == "progress"]
    assert progress_records and progress_records[0]["eta_s"] == 6.0  # 1 of 4 done in 2 s
    assert records[-1]["done"] == records[-1]["total"] == 4


def test_terminal_gets_rich_bars_with_an_eta_column():
    stream = io.StringIO()
    with progress_reporter(stream=stream, tty=True) as progress:
        progress("collecting statistics", 1, 2)
        progress("collecting statistics", 2, 2)
    text = stream.getvalue()
    assert "collecting statistics" in text and "ETA" in text and "2/2" in text


def test_plain_line_and_seconds_formats():
    assert format_seconds(42.4) == "42s"
    assert format_seconds(185) == "3m05s"
    assert format_seconds(3720) == "1h02m"
    from onnxprune.common.progress import _Stage

    stage = _Stage("x", started=0.0, done=0, total=1)
    assert plain_line("start", stage, 0.0) == "onnxprune: x (1 step) ..."


def test_a_stage_without_counts_says_it_is_running():
    stream, clock = io.StringIO(), FakeClock()
    with progress_reporter(stream=stream, tty=False, clock=clock) as progress:
        for _ in range(3):
            progress("finding the fastest within the bound", 0, 0)
            clock.now += 3.0
    assert stream.getvalue().splitlines() == [
        "onnxprune: finding the fastest within the bound ...",
        "onnxprune: finding the fastest within the bound: running, 6s",
        "onnxprune: finding the fastest within the bound: done (9s)",
    ]
