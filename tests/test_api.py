"""The Python API: a real signature, path or ModelProto in, a result object out, ORT readers."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxprune
from onnxprune import NodeOverride, PruneConfig, PruneResult, UserError
from tests.cli_helpers import invoke

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "models" / "digits_mlp.onnx"
CALIB = ROOT / "calibration" / "digits_mlp"
FAST = dict(threads=2, verify_sessions=1, verify_seconds=0.3)
"""Small settings: one short speed measurement (speed is never asserted here)."""


class NpzReader:
    """An ONNX Runtime-style CalibrationDataReader: get_next() until None."""

    def __init__(self, folder: Path) -> None:
        self._batches = iter([{"input": np.load(f)["input"]}
                              for f in sorted(folder.glob("*.npz"))])

    def get_next(self):
        return next(self._batches, None)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("latency-cache")


def test_prune_has_a_real_signature_with_every_option():
    params = inspect.signature(onnxprune.prune).parameters
    assert list(params)[:3] == ["model_input", "model_output", "speedup"]
    assert params["model_output"].default is None
    keyword_only = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert {"calibration_data_reader", "calib_dir", "sparsity", "nm", "shapes", "layouts",
            "max_error", "best_effort", "node_overrides", "progress"} <= keyword_only
    # Every PruneConfig option is a keyword of the API, with the same default.
    renamed = {"overrides": "node_overrides"}
    for field in dataclasses.fields(PruneConfig):
        name = renamed.get(field.name, field.name)
        assert name in params, field.name
        if field.default is not dataclasses.MISSING and field.default is not None:
            assert params[name].default == field.default, field.name
    assert "speedup" in onnxprune.prune.__doc__ and "Returns" in onnxprune.prune.__doc__
    assert list(inspect.signature(onnxprune.profile).parameters)[0] == "model_input"


def test_import_onnxprune_stays_light():
    code = ("import sys, onnxprune; heavy = [m for m in ('onnxruntime', 'onnx', "
            "'onnxprune.pipeline.prune', 'onnxprune.latency') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "[]"


def test_model_proto_and_reader_in_model_out_nothing_on_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = onnx.load(str(MLP))
    result = onnxprune.prune(model, None, nm=(2, 4), calibration_data_reader=NpzReader(CALIB),
                             **FAST)
    assert isinstance(result, PruneResult)
    assert list(tmp_path.iterdir()) == []  # no temp file left in the working folder
    assert result.output_path is None and result.written
    assert isinstance(result.model, onnx.ModelProto)
    onnx.checker.check_model(result.model, full_check=True)
    session = ort.InferenceSession(result.model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((2, 64), np.float32)})[1].shape == (2, 10)
    # The result says what happened: plan per node, fidelity per output, measured speed.
    assert {e.name for e in result.plan} == {"MatMul", "MatMul1", "MatMul2"}
    assert all(e.layout == "nm" and e.label.startswith("nm 2:4") for e in result.plan)
    assert all(e.weights_after <= e.weights_before // 2 for e in result.plan)
    assert set(result.fidelity_per_output) == {o.name for o in model.graph.output}
    assert result.fidelity is not None and result.fidelity.samples > 0
    assert result.speedup is not None and result.speedup_range is not None
    measured = result.report.measured  # the result carries the run's own measurement
    assert result.speedup == measured.speedup
    assert result.speedup_range == (measured.speedup_min, measured.speedup_max)
    assert result.report.calibration["source"].startswith("reader NpzReader")
    assert result.report.input_path == "<onnx.ModelProto>"
    assert result.exit_code == 0
    assert result.to_json()["output"] is None


def test_path_in_path_out(tmp_path):
    out = tmp_path / "sub" / "pruned.onnx"
    result = onnxprune.prune(str(MLP), out, sparsity=0.5, layouts="unstructured",
                             calib_dir=CALIB, shapes=["input=8x64"], **FAST)
    assert result.output_path == out and out.exists() and result.model is None
    assert result.to_json()["output"] == str(out)
    assert result.to_json()["input_shapes"] == {"input": [8, 64]}
    assert all(abs(e.level - 0.5) < 1e-6 for e in result.plan)


def test_api_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="get_next"):
        onnxprune.prune(MLP, tmp_path / "o.onnx", nm="2:4", calibration_data_reader=object())
    with pytest.raises(UserError, match="unknown key 'levels'"):
        onnxprune.prune(MLP, tmp_path / "o.onnx", nm="2:4",
                        node_overrides=[{"match": "MatMul", "levels": 0.5}])
    with pytest.raises(UserError, match="path or an onnx.ModelProto"):
        onnxprune.prune(42, tmp_path / "o.onnx", nm="2:4")
    with pytest.raises(UserError, match="calibration folder not found"):
        onnxprune.prune(MLP, tmp_path / "o.onnx", 2.0, calib_dir=tmp_path / "nope")
    for bad in ((0, 64), (-1, 64), (8.5, 64)):  # checked as --shape is
        with pytest.raises(UserError, match="bad --shape"):
            onnxprune.profile(MLP, shapes={"input": bad})
    assert not (tmp_path / "o.onnx").exists()


def test_speedup_plan_obeys_node_rules_and_refuses_structures(tmp_path, cache_dir):
    """Speedup mode: a rule forcing block on a structure's consumer drops that structure; a cap
    bounds the level the allocator may pick."""
    rules = [NodeOverride("MatMul1", layouts=("block",)),
             {"match": "MatMul2", "max_level": 0.25}]
    result = onnxprune.prune(MLP, tmp_path / "o.onnx", 1.3, layouts=("structure", "block"),
                             shapes={"input": (64, 64)}, cache_dir=cache_dir, dry_run=True,
                             best_effort=True, node_overrides=rules, threads=2)
    plan = {e.name: e for e in result.plan}
    assert plan["MatMul1"].layout in ("dense", "block")
    assert plan["MatMul2"].level <= 0.25 + 1e-9
    # Both FFN structures pass through MatMul1 (consumer of one, producer of the other).
    assert result.report.structures == []
    refused = [b for b in result.report.structures_blocked if "per-node rule" in b["reason"]]
    assert [b["producer"] for b in refused] == ["MatMul", "MatMul1"]
    assert not (tmp_path / "o.onnx").exists()


def test_profile_returns_a_result_object(cache_dir):
    result = onnxprune.profile(onnx.load(str(MLP)), shapes={"input": (16, 64)}, threads=2,
                               cache_dir=cache_dir)
    assert sorted(n.name for n in result.nodes) == ["MatMul", "MatMul1", "MatMul2"]
    assert all(n.dense_s > 0 and n.fastest for n in result.nodes)
    assert result.amdahl_bound >= 1.0 and result.dense_total_s > 0
    assert result.to_json()["model"] == "<onnx.ModelProto>"
    assert result.to_json()["amdahl_bound"] == result.amdahl_bound


def test_cli_is_a_thin_layer_over_the_api(tmp_path):
    """Same options through the CLI: the JSON equals the API's result, progress is plain lines
    (not a terminal), and --quiet prints none."""
    out, report, log = tmp_path / "cli.onnx", tmp_path / "r.json", tmp_path / "log.jsonl"
    args = [MLP, out, "--nm", "2:4", "--calib", CALIB, "--threads", "2",
            "--verify-sessions", "1", "--json", report]
    result = invoke(*args, "--log-json", log)
    assert result.code == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "onnxprune: collecting statistics (3 steps) ..." in lines
    assert any(line.startswith("onnxprune: measuring speedup: done") for line in lines)
    assert "\r" not in result.stderr
    data = json.loads(report.read_text())
    assert data["written"] and [layer["layout"] for layer in data["layers"]] == ["nm"] * 3
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert {e["stage"] for e in events} >= {"collecting statistics", "measuring speedup"}
    assert events[-1]["event"] == "end"
    quiet = invoke(*args, "--quiet")
    assert quiet.code == 0, quiet.stderr
    assert "collecting statistics" not in quiet.stderr and "measuring" not in quiet.stderr


def test_structure_kinds_keep_only_structures_of_those_kinds(tmp_path, cache_dir):
    common = dict(layouts="block", shapes={"input": (64, 64)}, cache_dir=cache_dir,
                  dry_run=True, best_effort=True, threads=2)
    # Forced where the run-wide layouts have no "structure": only the FFN through MatMul1 used.
    kept = onnxprune.prune(MLP, tmp_path / "o.onnx", 1.3, **common, node_overrides=[
        {"match": "MatMul2", "structure_kinds": ["ffn"]}])
    assert [(s["consumer"], s["kind"]) for s in kept.report.structures] == [("MatMul2", "ffn")]
    assert {e.name: e.layout for e in kept.plan}["MatMul2"] in ("structure", "dense")
    # What the allocator may choose: the consumer its widths, the producer nothing of its own
    # (it shrinks with the structure), the first layer the run's block layout.
    from onnxprune.pipeline.stages import analyse_file as _analyse

    config = PruneConfig(speedup=1.3, layouts=("block",), shapes={"input": (64, 64)},
                         overrides=(NodeOverride("MatMul2", structure_kinds=("ffn",)),))
    graph, _ = _analyse(MLP, tmp_path / "o.onnx", config)
    menu = {name: {o.layout for o in opts} for name, opts in graph.options.items()}
    assert menu == {"MatMul": {"dense", "block"}, "MatMul1": {"dense"},
                    "MatMul2": {"dense", "structure"}}
    # A kind the node is not part of: no structure, and the node may take no other layout.
    refused = onnxprune.prune(MLP, tmp_path / "o.onnx", 1.3, **common, node_overrides=[
        {"match": "MatMul2", "structure_kinds": ["heads"]}])
    assert refused.report.structures == []
    assert {e.name: e.layout for e in refused.plan}["MatMul2"] == "dense"
