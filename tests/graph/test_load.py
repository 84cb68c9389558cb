"""Loading refuses bad files with a UserError; saving is atomic."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.common.errors import UserError
from onnxprune.graph.load import load_model, ort_max_ir_version, save_model_atomic


def _tiny(k: int = 64, n: int = 64) -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_roundtrip(tmp_path):
    path = save_model_atomic(_tiny(), tmp_path / "m.onnx")
    loaded = load_model(path)
    assert loaded.graph.node[0].name == "mm"
    assert not list(tmp_path.glob(".*tmp"))


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_model(tmp_path / "nope.onnx")


def test_not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a protobuf, just text\n" * 10)
    with pytest.raises(UserError, match="not a valid ONNX model"):
        load_model(path)


def test_truncated(tmp_path):
    full = _tiny().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(UserError, match="not a valid ONNX model"):
        load_model(path)


def _with_external(tmp_path, location: str) -> str:
    model = _tiny()
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True,
                    location="w.bin", size_threshold=0)
    model = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(tmp_path / "m.onnx"))
    return str(tmp_path / "m.onnx")


def test_external_data_inside_folder_loads(tmp_path):
    model = load_model(_with_external(tmp_path, "w.bin"))
    assert numpy_helper.to_array(model.graph.initializer[0]).shape == (64, 64)


@pytest.mark.parametrize("location", ["../w.bin", "/etc/passwd", "sub/../../w.bin"])
def test_external_data_escaping_folder_is_refused(tmp_path, location):
    sub = tmp_path / "model"
    sub.mkdir()
    path = _with_external(sub, "w.bin")
    (tmp_path / "w.bin").write_bytes((sub / "w.bin").read_bytes())
    model = onnx.load(path, load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save_model(model, path)
    with pytest.raises(UserError, match="external data"):
        load_model(path)


def test_missing_external_data(tmp_path):
    path = _with_external(tmp_path, "w.bin")
    (tmp_path / "w.bin").unlink()
    with pytest.raises(UserError, match="missing"):
        load_model(path)


def test_ort_ir_version_probe_is_loadable():
    import onnxruntime as ort

    model = _tiny()
    model.ir_version = ort_max_ir_version()
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
