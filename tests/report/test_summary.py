"""The terminal summary's fidelity lines: both measures with their bounds, the worst channels, and
what the requested speed cost when --best-effort wrote a slower model."""

from __future__ import annotations

import numpy as np
from rich.console import Console

from onnxprune.fidelity import FidelityBound, compare, load_metric
from onnxprune.pipeline.result import Report
from onnxprune.report.summary import render_report


def _text(report: Report) -> str:
    console = Console(record=True, width=200)
    render_report(console, report)
    return console.export_text()


def test_the_summary_names_the_worst_channels_and_the_fidelity_at_the_target():
    rng = np.random.default_rng(0)
    dense = {"y": rng.standard_normal((20, 6)).astype(np.float32)}
    close = {"y": dense["y"] + 0.01}
    broken = {"y": dense["y"].copy()}
    broken["y"][:, 4] = 0.0
    metric = load_metric("cosine")
    report = Report("in.onnx", "out.onnx", "speedup", 2.0, "CPUExecutionProvider", 2, {})
    report.bound = FidelityBound(max_error=0.2, max_channel_error=0.5, metric=metric,
                                 max_metric_drop=0.05)
    report.fidelity = compare([(close, dense, None)], metric=metric)
    report.at_target = compare([(broken, dense, None)], metric=metric)
    report.within_bound = True
    text = _text(report)
    assert "channel error 0.0" in text and "(bound 0.5)" in text
    assert "cosine 1.000 -> 1.000 (drop 0.000, bound 0.05)" in text
    assert "worst: channels" in text and "of axis 1 (of 6)" in text
    assert "at the requested 2x the allocation broke the bound:" in text
    assert "channel error 1.050 on output 'y', channels 4," in text
