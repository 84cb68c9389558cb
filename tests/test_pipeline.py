"""End to end on the shipped models: what is written, what is refused, what the report says.

Speed is never asserted here (that belongs to benchmarks): runs use --best-effort where a noisy
machine could make a measured target miss, and the assertions are about validity, exactness,
patterns and the report's honesty.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxprune import PruneConfig
from onnxprune.common.errors import TargetUnreachableError, UserError
from onnxprune.layouts.nm import check_nm
from onnxprune.pipeline.prune import prune

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
CALIB = ROOT / "calibration"
EVAL = np.load(MODELS / "data" / "digits_eval.npz")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("latency-cache")


def _run(path: Path, batch: int) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = EVAL["input_img"][:batch]
    return session.run(None, {"input": x})[-1]


def test_cnn_speedup_target_writes_a_valid_exact_model(tmp_path, cache_dir):
    out = tmp_path / "cnn.onnx"
    config = PruneConfig(speedup=1.5, calib_dir=CALIB / "digits_cnn",
                         shapes={"input": (64, 1, 8, 8)},
                         threads=2, search_budget=3, cache_dir=cache_dir, best_effort=True)
    report = prune(MODELS / "digits_cnn.onnx", out, config)
    assert report.written and out.exists()
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    # Dynamic batch survives: the model was timed at 64 and must run at 5 and 64.
    assert _run(out, 5).shape == (5, 10)
    assert _run(out, 64).shape == (64, 10)
    # Something was pruned, with a structured (fast) layout, and it is reported per node.
    layouts = {layer.option.layout for layer in report.layers}
    assert layouts & {"block", "channel", "structure"}
    # The CNN's conv chains are found as structures and shrink whole: no restore Gather.
    assert {s["kind"] for s in report.structures} >= {"conv-chain"}
    if "structure" in layouts:
        assert "Gather" not in {n.op_type for n in model.graph.node}
    assert report.exactness is not None and report.exactness < 1e-3
    assert report.measured is not None and report.measured.pairs >= 5
    assert report.amdahl_bound and report.amdahl_bound > 1.5
    # The pruned model still classifies the held-out digits far above chance.
    logits = _run(out, 300)
    accuracy = float(np.mean(np.argmax(logits, -1) == EVAL["labels"]))
    assert accuracy > 0.8


def test_unreachable_target_exits_3_and_writes_nothing(tmp_path, cache_dir):
    out = tmp_path / "never.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "onnxprune", str(MODELS / "digits_transformer.onnx"), str(out),
         "--speedup", "40", "--shape", "input=64x8x8", "--threads", "2",
         "--cache-dir", str(cache_dir)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 3, result.stderr
    assert "not reachable" in result.stderr and "Amdahl bound" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_speed_beyond_a_tight_fidelity_bound_exits_3_and_names_both_numbers(tmp_path, cache_dir):
    out = tmp_path / "tight.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "onnxprune", str(MODELS / "digits_cnn.onnx"), str(out),
         "--speedup", "2", "--max-error", "0.02", "--calib", str(CALIB / "digits_cnn"),
         "--shape", "input=64x1x8x8", "--threads", "2", "--search-budget", "2",
         "--verify-sessions", "2", "--cache-dir", str(cache_dir), "--quiet",
         "--json", str(tmp_path / "refused.json")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 3, result.stderr
    # A pipeline reads why from the JSON: both numbers are there, and nothing was written.
    data = json.loads((tmp_path / "refused.json").read_text())
    assert data["written"] is False and "fidelity bound" in data["refused"]
    assert data["fidelity_at_target"]["relative_error"] > 0.02
    assert data["within_fidelity_bound"] is True and data["measured_speedup"]["speedup"] > 0
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    # Both numbers: the fidelity at the requested speed, and the best speed within the bound.
    assert "at the requested 2x" in message and "> 0.02" in message
    assert "the fastest model within the fidelity bound measured" in message
    assert not out.exists()


def test_best_effort_writes_the_fastest_model_within_the_bound(tmp_path, cache_dir):
    out = tmp_path / "within.onnx"
    config = PruneConfig(speedup=2.0, max_error=0.02, calib_dir=CALIB / "digits_cnn",
                         shapes={"input": (64, 1, 8, 8)}, threads=2, search_budget=2,
                         verify_sessions=2, cache_dir=cache_dir, best_effort=True)
    report = prune(MODELS / "digits_cnn.onnx", out, config)
    assert report.written and out.exists() and report.met_target is False
    assert report.fidelity is not None and report.fidelity.error <= 0.02
    assert report.within_bound is True
    assert report.at_target is not None and report.at_target.error > 0.02
    assert any(row.get("within_bound") is False for row in report.rounds)


def test_dry_run_plans_without_writing(tmp_path, cache_dir):
    out = tmp_path / "dry.onnx"
    config = PruneConfig(speedup=1.3, shapes={"input": (64, 64)}, threads=2,
                         cache_dir=cache_dir, dry_run=True, best_effort=True)
    report = prune(MODELS / "digits_mlp.onnx", out, config)
    assert not out.exists() and not report.written
    # Allocator invariant (no timing involved): the plan reaches the target, or the bound when
    # the target is beyond it, and never claims more than the bound.
    planned, bound = report.predicted_speedup, report.amdahl_bound
    assert planned is not None and bound is not None
    assert min(1.3, bound * 0.999) * 0.99 <= planned <= bound * 1.001
    assert report.layers and any(layer.option.layout != "dense" for layer in report.layers)
    assert any("no calibration data" in note for note in report.notes)
    # Without calibration data fidelity cannot be measured: null in the JSON, with the reason.
    from onnxprune.report.summary import report_to_json

    data = report_to_json(report)
    assert data["fidelity"] is None and "no calibration data" in data["fidelity_reason"]


def test_nm_mode_writes_the_pattern(tmp_path):
    out = tmp_path / "nm.onnx"
    config = PruneConfig(nm=(2, 4), calib_dir=CALIB / "digits_mlp", threads=2)
    report = prune(MODELS / "digits_mlp.onnx", out, config)
    assert report.written
    assert any("TensorRT" in note for note in report.notes)  # honest: no CPU speedup
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    pruned = [w for w in weights.values() if w.ndim == 2 and w.shape[0] % 4 == 0
              and w.shape[0] >= 64]
    assert pruned
    for w in pruned:  # canonical W[K, N]: the pattern runs along K
        assert check_nm(w.T != 0, 2, 4)


def test_sparsity_mode_needs_one_layout(tmp_path):
    with pytest.raises(UserError, match="exactly one layout"):
        prune(MODELS / "digits_mlp.onnx", tmp_path / "x.onnx", PruneConfig(sparsity=0.5))


def test_uniform_block_sparsity_with_json(tmp_path):
    out = tmp_path / "block.onnx"
    json_path = tmp_path / "report.json"
    command = [sys.executable, "-m", "onnxprune", str(MODELS / "digits_transformer.onnx"),
               str(out), "--sparsity", "0.5", "--layouts", "block", "--calib",
               str(CALIB / "digits_transformer"), "--json", str(json_path), "--threads", "2",
               "--quiet"]
    # 50% everywhere costs this small transformer more than the default fidelity bound allows.
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 3, refused.stderr
    assert "fidelity bound" in refused.stderr and "Traceback" not in refused.stderr
    assert not out.exists()
    result = subprocess.run([*command, "--max-error", "0.9", "--max-channel-error", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads(json_path.read_text())
    assert data["written"] and data["mode"] == "sparsity"
    assert data["within_fidelity_bound"] is True
    assert 0.2 < data["fidelity"]["relative_error"] <= 0.9
    assert data["fidelity"]["samples"] == data["calibration"]["verify_samples"] == 48
    block_layers = [layer for layer in data["layers"] if layer["layout"] == "block"]
    assert len(block_layers) >= 8
    assert all(abs(layer["level"] - 0.5) < 0.13 for layer in block_layers)
    assert data["weights_after"] < data["weights_before"]
    assert data["measured_speedup"]["pairs"] >= 5
    assert len(data["measured_speedup"]["sessions"]) == 5
    assert data["max_relative_difference_vs_masked_dense"] < 1e-3
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": EVAL["input_seq"][:7]})[0].shape == (7, 10)


def test_no_prunable_node_is_not_success(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "relu.onnx"
    onnx.save(model, str(path))
    with pytest.raises(TargetUnreachableError, match="no prunable node"):
        prune(path, tmp_path / "out.onnx", PruneConfig(speedup=2.0))
    assert not (tmp_path / "out.onnx").exists()


def test_unstructured_sparse_storage_writes_sparse_initializers(tmp_path):
    out = tmp_path / "sparse.onnx"
    dense_out = tmp_path / "masked.onnx"
    common = dict(sparsity=0.75, layouts=("unstructured",), calib_dir=CALIB / "digits_mlp",
                  threads=2)
    prune(MODELS / "digits_mlp.onnx", dense_out, PruneConfig(**common))
    report = prune(MODELS / "digits_mlp.onnx", out, PruneConfig(**common, sparse_storage=True))
    model = onnx.load(str(out))
    assert len(model.graph.sparse_initializer) == 3
    assert out.stat().st_size < dense_out.stat().st_size
    assert report.exactness is not None and report.exactness < 1e-3  # ORT densifies on load
    x = EVAL["input_flat"][:9]
    got = ort.InferenceSession(str(out)).run(None, {"input": x})[-1]
    want = ort.InferenceSession(str(dense_out)).run(None, {"input": x})[-1]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_model_with_onnx_default_ir_version_is_pruned(tmp_path):
    """onnx writes a newer IR than ORT may read; every session must see a stamped model."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((64, 128)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((128, 32)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])], [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert model.ir_version == onnx.IR_VERSION  # the default, whatever ORT accepts
    path = tmp_path / "fresh.onnx"
    onnx.save(model, str(path))
    out = tmp_path / "out.onnx"
    report = prune(path, out, PruneConfig(sparsity=0.5, layouts=("block",), threads=2,
                                          shapes={"x": (32, 64)}))
    assert report.written and report.measured is not None
    assert ort.InferenceSession(str(out)).run(None, {"x": np.ones((3, 64), np.float32)})[0].shape \
        == (3, 32)


def test_a_rule_offering_structure_and_block_never_block_prunes_a_structure_producer():
    """Uniform and speedup modes read a node's layouts through one function: a producer is
    shrunk by its consumer's structure only, even when a rule lists block beside structure."""
    from onnxprune.config.settings import NodeOverride
    from onnxprune.graph.candidates import find_candidates
    from onnxprune.graph.shapes import bind_input_shapes
    from onnxprune.pipeline.analyse import _options_for
    from onnxprune.structures.context import discover_and_attach

    model = onnx.load(str(MODELS / "digits_mlp.onnx"))
    analysis = find_candidates(model, bind_input_shapes(model, {"input": (16, 64)}))
    _, candidates, producers, _ = discover_and_attach(model, analysis,
                                                      list(analysis.candidates))
    assert producers
    rule = NodeOverride(match=".*", layouts=("structure", "block"))
    for mode in ({"sparsity": 0.5}, {"speedup": 2.0}):
        config = PruneConfig(layouts=("block",), overrides=(rule,), **mode)
        options = _options_for(candidates, ["block"], config, [], producers)
        for name in producers:
            assert "block" not in {o.layout for o in options.get(name, [])}, (mode, name)
