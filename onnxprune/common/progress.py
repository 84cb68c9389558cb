"""Progress of a run, shown where the user is: bars on a terminal, lines in a CI log, JSON to tools.

The library reports progress through one callback, ``(stage, done, total)`` (``total`` 0 when the
amount of work is not known in advance, e.g. a time-boxed search). This module turns that stream
into what fits the place the output goes:

* a terminal: one rich bar per stage, with the elapsed time and an ETA;
* anything else (a CI log, ``make`` output, a pipe): plain lines, one when a stage starts, one
  about every 10% or 5 seconds with an ETA, and one when it ends; never a carriage return, so a
  log holds a readable history instead of a wall of redrawn bars;
* ``quiet``: nothing;
* ``log_json``: in addition, one JSON object per line per event (start, progress, end) in a file,
  so a pipeline can follow the run without scraping text.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

Progress = Callable[[str, int, int], None]
"""(stage description, done, total): ``total`` 0 means the amount of work is not known.

A description may carry a detail that changes as the stage runs after ``DETAIL`` (global
recovery's falling loss: ``"global recovery · loss 0.12"``); the stage is the part before it."""

DETAIL = " · "


def stage_key(stage: str) -> str:
    """The stage a description belongs to (the text before a changing detail)."""
    return stage.split(DETAIL, 1)[0]

PLAIN_STEP = 0.10
"""Plain lines are printed each time a stage crosses another 10% of its total ..."""
PLAIN_INTERVAL_S = 5.0
"""... or when this many seconds passed since its last line."""
JSON_INTERVAL_S = 1.0
"""A JSON progress event is written at most this often per stage (start and end always are)."""


@dataclass
class _Stage:
    """What is known about one stage: when it started and what was last reported."""

    name: str
    started: float
    done: int = 0
    total: int = 0
    last_emit: float = 0.0
    last_fraction: float = 0.0
    finished: bool = False

    def fraction(self) -> float | None:
        return min(self.done / self.total, 1.0) if self.total > 0 else None

    def eta_s(self, now: float) -> float | None:
        """Remaining seconds at the average pace so far (None until something is done)."""
        if self.total <= 0 or self.done <= 0 or self.done >= self.total:
            return None
        return (now - self.started) / self.done * (self.total - self.done)


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: short enough for a log line."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class StageTracker:
    """Turns the raw callback stream into start / progress / end events with ETAs.

    A stage ends when it reaches its total, when another stage starts after it went quiet (the
    pipeline does not announce ends of open-ended stages), or when the run closes.

    Attributes:
        on_event: called with (event, stage, now) for "start", "progress" and "end"; "progress"
            only when ``due`` says an update is worth showing.
        due: decides, per (stage, now), whether a "progress" event is emitted.
        clock: the time source (injectable for tests).
    """

    on_event: Callable[[str, _Stage, float], None]
    due: Callable[[_Stage, float], bool]
    clock: Callable[[], float] = time.monotonic
    stages: dict[str, _Stage] = field(default_factory=dict)

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        key = stage_key(stage)
        state = self.stages.get(key)
        complete = total > 0 and done >= total
        if state is None or (state.finished and not complete):  # new, or run again
            self._close_others(key, now)
            state = self.stages[key] = _Stage(stage, now, last_emit=now)
            state.done, state.total = done, total
            state.last_fraction = state.fraction() or 0.0
            self.on_event("start", state, now)
        state.name = stage
        state.done, state.total = done, total
        if state.finished:
            return
        if complete:
            self._end(state, now)
        elif self.due(state, now):
            self.on_event("progress", state, now)
            state.last_emit = now
            state.last_fraction = state.fraction() or 0.0

    def _close_others(self, current: str, now: float) -> None:
        for key, state in self.stages.items():
            if key != current and not state.finished:
                self._end(state, now)

    def _end(self, state: _Stage, now: float) -> None:
        state.finished = True
        self.on_event("end", state, now)

    def close(self) -> None:
        """End every stage still open (the run is over)."""
        now = self.clock()
        for state in self.stages.values():
            if not state.finished:
                self._end(state, now)


def plain_due(state: _Stage, now: float) -> bool:
    """Another 10% done, or 5 s since the last line."""
    fraction = state.fraction()
    if fraction is not None and fraction - state.last_fraction >= PLAIN_STEP - 1e-9:
        return True
    return now - state.last_emit >= PLAIN_INTERVAL_S


def plain_line(event: str, state: _Stage, now: float) -> str:
    """One log line for an event, e.g. ``timing layer options: 12/40 (30%), 9s, ETA 21s``."""
    elapsed = format_seconds(now - state.started)
    if event == "start":
        size = f" ({state.total} step{'s' if state.total != 1 else ''})" if state.total else ""
        return f"onnxprune: {state.name}{size} ..."
    if event == "end":
        count = f"{state.done}/{state.total}, " if state.total > 0 else (
            f"{state.done} steps, " if state.done else "")
        return f"onnxprune: {state.name}: done ({count}{elapsed})"
    if state.total > 0:
        eta = state.eta_s(now)
        eta_text = f", ETA {format_seconds(eta)}" if eta is not None else ""
        return (f"onnxprune: {state.name}: {state.done}/{state.total} "
                f"({state.fraction():.0%}), {elapsed}{eta_text}")
    if state.done:
        return f"onnxprune: {state.name}: {state.done} so far, {elapsed}"
    return f"onnxprune: {state.name}: running, {elapsed}"


def json_record(event: str, state: _Stage, now: float, wall: float) -> dict:
    """The JSON object of one event (``--log-json``): stage, counts, elapsed and ETA seconds."""
    return {
        "time": round(wall, 3), "event": event, "stage": stage_key(state.name),
        **({"detail": state.name.split(DETAIL, 1)[1]} if DETAIL in state.name else {}),
        "done": state.done,
        "total": state.total or None, "elapsed_s": round(now - state.started, 3),
        "eta_s": None if (eta := state.eta_s(now)) is None else round(eta, 3),
    }


def json_due(state: _Stage, now: float) -> bool:
    return now - state.last_emit >= JSON_INTERVAL_S or (
        (fraction := state.fraction()) is not None and fraction - state.last_fraction >= PLAIN_STEP)


def _fan_out(callbacks: list[Progress]) -> Progress:
    def update(stage: str, done: int, total: int) -> None:
        for callback in callbacks:
            callback(stage, done, total)
    return update


@contextlib.contextmanager
def _rich_bars(stream: IO[str]) -> Iterator[Progress]:
    """One rich bar per stage, with elapsed time and ETA (on a terminal)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as Bars

    console = Console(file=stream)
    bars = Bars(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                transient=False)
    tasks: dict[str, int] = {}
    with bars:
        def update(stage: str, done: int, total: int) -> None:
            key = stage_key(stage)
            if key not in tasks:
                tasks[key] = bars.add_task(stage, total=total or None)
            bars.update(tasks[key], completed=done, total=total or None, description=stage)
        yield update


@contextlib.contextmanager
def _plain_lines(stream: IO[str], clock: Callable[[], float]) -> Iterator[Progress]:
    def write(event: str, state: _Stage, now: float) -> None:
        stream.write(plain_line(event, state, now) + "\n")
        stream.flush()

    tracker = StageTracker(write, plain_due, clock)
    try:
        yield tracker
    finally:
        tracker.close()


@contextlib.contextmanager
def _json_log(path: Path, clock: Callable[[], float]) -> Iterator[Progress]:
    """Appends as the run goes (a pipeline may follow the file), one object per line."""
    from onnxprune.common.errors import UserError

    try:
        handle = open(path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UserError(f"cannot write --log-json {path}: {exc.strerror}") from None

    def write(event: str, state: _Stage, now: float) -> None:
        handle.write(json.dumps(json_record(event, state, now, time.time())) + "\n")

    tracker = StageTracker(write, json_due, clock)
    try:
        yield tracker
    finally:
        tracker.close()
        handle.close()


@contextlib.contextmanager
def progress_reporter(
    quiet: bool = False,
    log_json: str | Path | None = None,
    stream: IO[str] | None = None,
    tty: bool | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Progress]:
    """The progress callback for a run, chosen by where the output goes.

    Args:
        quiet: show nothing (``--log-json`` is still written).
        log_json: a file to write one JSON object per progress event to, or None.
        stream: where bars or lines go (default: stderr).
        tty: force terminal (bars) or not (plain lines); None asks the stream.
        clock: the time source of plain lines and JSON events (tests inject one).

    Yields:
        A ``(stage, done, total)`` callback; on exit every open stage is reported as ended.
    """
    stream = stream if stream is not None else sys.stderr
    with contextlib.ExitStack() as stack:
        callbacks: list[Progress] = []
        if not quiet:
            is_tty = tty if tty is not None else bool(getattr(stream, "isatty", lambda: False)())
            callbacks.append(stack.enter_context(
                _rich_bars(stream) if is_tty else _plain_lines(stream, clock)))
        if log_json is not None:
            callbacks.append(stack.enter_context(_json_log(Path(log_json), clock)))
        yield _fan_out(callbacks)
