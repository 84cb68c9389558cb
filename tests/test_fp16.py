"""fp16 models as ONNX Runtime's own converter writes them are pruned, and stay fp16."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnxruntime.transformers.float16 import convert_float_to_float16

from onnxprune import PruneConfig
from onnxprune.common.errors import UserError
from onnxprune.graph.load import ort_max_ir_version
from onnxprune.pipeline.prune import prune

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT / "calibration" / "digits_cnn"
EVAL = np.load(ROOT / "models" / "data" / "digits_eval.npz")


def _fp16_cnn(path: Path, shuffle: bool, keep_io_types: bool = True) -> Path:
    """The shipped CNN through ``convert_float_to_float16`` (which already lists its input Cast
    last, so onnx.checker refuses it); ``shuffle`` also scrambles the whole node order."""
    model = convert_float_to_float16(onnx.load(str(ROOT / "models" / "digits_cnn.onnx")),
                                     keep_io_types=keep_io_types)
    model.ir_version = min(model.ir_version, ort_max_ir_version())
    if shuffle or not keep_io_types:
        nodes = list(model.graph.node)
        random.Random(3).shuffle(nodes)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(model)
    onnx.save(model, str(path))
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # ORT runs it
    return path


@pytest.mark.parametrize("shuffle", [False, True])
def test_fp16_model_prunes_and_stays_fp16(tmp_path, shuffle):
    src = _fp16_cnn(tmp_path / "cnn16.onnx", shuffle)
    before = src.read_bytes()
    out = tmp_path / "out.onnx"
    config = PruneConfig(sparsity=0.25, layouts=("structure",), calib_dir=CALIB,
                         shapes={"input": (64, 1, 8, 8)}, threads=1, verify_sessions=1,
                         verify_seconds=0.5)
    report = prune(src, out, config)
    assert report.written and src.read_bytes() == before
    assert any("float16" in note for note in report.notes)
    # Exact against the float32 masked-dense reference within fp16 rounding.
    assert report.exactness is not None and report.exactness < 3e-2
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    weights = [t for t in model.graph.initializer if t.data_type != TensorProto.INT64]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert [n.attribute[0].i for n in casts] == [TensorProto.FLOAT16, TensorProto.FLOAT]
    assert report.size_after < report.size_before
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = EVAL["input_img"][:32]
    logits = session.run(None, {"input": x})[0]
    assert logits.dtype == np.float32 and logits.shape == (32, 10)
    assert np.mean(logits.argmax(1) == EVAL["labels"][:32]) > 0.8


def test_bfloat16_model_the_runtime_cannot_run_is_refused(tmp_path):
    from onnx import helper

    w = helper.make_tensor("w", TensorProto.BFLOAT16, [64, 32],
                           np.random.default_rng(0).random(64 * 32).tolist())
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["xc"], to=TensorProto.BFLOAT16, name="c0"),
         helper.make_node("MatMul", ["xc", "w"], ["yc"], name="mm"),
         helper.make_node("Cast", ["yc"], ["y"], to=TensorProto.FLOAT, name="c1")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "bf16.onnx"
    onnx.save(model, str(src))
    with pytest.raises(UserError, match="cannot run this bfloat16 model"):
        prune(src, tmp_path / "out.onnx", PruneConfig(sparsity=0.5, layouts=("unstructured",)))
    result = subprocess.run([sys.executable, "-m", "onnxprune", str(src), str(tmp_path / "o.onnx"),
                             "--sparsity", "0.5", "--layouts", "unstructured"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_inspect_lists_fp16_weights_as_prunable(tmp_path):
    """inspect analyses the model as prune does (float32 twin), not "float32 only" skips."""
    import json

    src = _fp16_cnn(tmp_path / "cnn16.onnx", shuffle=False)
    out = tmp_path / "inspect.json"
    result = subprocess.run([sys.executable, "-m", "onnxprune", "inspect", str(src),
                             "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert len(data["candidates"]) == 5
    assert not any("dtype" in s["reason"] for s in data["skipped"])


def test_fp16_inputs_and_outputs_prune_with_fp32_calibration(tmp_path):
    """keep_io_types=False: the float32 calibration data is cast to the fp16 inputs; the output
    takes and gives fp16 like the input model."""
    src = _fp16_cnn(tmp_path / "io16.onnx", shuffle=False, keep_io_types=False)
    out = tmp_path / "out.onnx"
    config = PruneConfig(sparsity=0.25, layouts=("block",), calib_dir=CALIB,
                         shapes={"input": (64, 1, 8, 8)}, threads=1, verify_sessions=1,
                         verify_seconds=0.5)
    report = prune(src, out, config)
    assert report.written and report.exactness is not None and report.exactness < 3e-2
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert not any("onnxprune_twin_cast" in n.name for n in model.graph.node)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": EVAL["input_img"][:32].astype(np.float16)})[0]
    assert logits.dtype == np.float16
    assert np.mean(logits.argmax(1) == EVAL["labels"][:32]) > 0.8
