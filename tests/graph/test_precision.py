"""The float32 twin of a half-precision model, and lowering it back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.transformers.float16 import convert_float_to_float16

from onnxprune.graph.precision import detect, lower, widen
from onnxprune.graph.toposort import toposort_graph

ROOT = Path(__file__).resolve().parents[2]


def _fp16_cnn() -> onnx.ModelProto:
    model = convert_float_to_float16(onnx.load(str(ROOT / "models" / "digits_cnn.onnx")),
                                     keep_io_types=True)
    toposort_graph(model.graph)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_float32_model_has_no_twin():
    model = onnx.load(str(ROOT / "models" / "digits_mlp.onnx"))
    twin, precision = widen(model)
    assert twin is model and precision is None


def test_fp16_twin_is_float32_and_computes_the_same():
    model = _fp16_cnn()
    assert detect(model) == TensorProto.FLOAT16
    twin, precision = widen(model)
    assert precision is not None and precision.name == "float16"
    assert all(t.data_type != TensorProto.FLOAT16 for t in twin.graph.initializer)
    onnx.checker.check_model(twin)
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(_run(twin, x), _run(model, x), rtol=2e-2, atol=2e-2)


def test_lowering_the_twin_restores_the_model_and_its_casts():
    model = _fp16_cnn()
    twin, precision = widen(model)
    back = lower(twin, precision)
    assert {t.name: t.data_type for t in back.graph.initializer} == \
           {t.name: t.data_type for t in model.graph.initializer}
    casts = [(n.name, n.attribute[0].i) for n in back.graph.node if n.op_type == "Cast"]
    assert casts == [(n.name, n.attribute[0].i) for n in model.graph.node if n.op_type == "Cast"]
    assert back.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # keep_io_types
    assert back.SerializeToString() == model.SerializeToString()


def test_bfloat16_roundtrip_without_running():
    """ORT's CPU EP has no bf16 MatMul (the pipeline refuses such a model); the twin and the
    lowering still keep the dtype and values (bf16 → fp32 is exact)."""
    values = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    w = helper.make_tensor("w", TensorProto.BFLOAT16, [8, 4], values.reshape(-1).tolist())
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["xc"], to=TensorProto.BFLOAT16, name="c0"),
         helper.make_node("MatMul", ["xc", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2, 4])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    twin, precision = widen(model)
    assert precision is not None and precision.name == "bfloat16"
    # IO keeps its dtype (the twin widens/narrows it with Casts of its own).
    assert twin.graph.output[0].type.tensor_type.elem_type == TensorProto.BFLOAT16
    assert twin.graph.node[-1].op_type == "Cast" and len(twin.graph.node) == 3
    widened = numpy_helper.to_array(twin.graph.initializer[0])
    assert widened.dtype == np.float32
    back = lower(twin, precision)
    assert back.graph.initializer[0].data_type == TensorProto.BFLOAT16
    assert back.graph.node[0].attribute[0].i == TensorProto.BFLOAT16
    np.testing.assert_array_equal(numpy_helper.to_array(back.graph.initializer[0])
                                  .astype(np.float32), widened)
    assert back.SerializeToString() == model.SerializeToString()


def test_fp16_inputs_and_outputs_keep_their_dtype():
    """keep_io_types=False: fp16 graph inputs/outputs; the twin takes and gives fp16 too, so the
    same feeds run both, and lowering gives the converter's model back byte for byte."""
    model = convert_float_to_float16(onnx.load(str(ROOT / "models" / "digits_cnn.onnx")),
                                     keep_io_types=False)
    toposort_graph(model.graph)
    twin, precision = widen(model)
    assert twin.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    onnx.checker.check_model(twin)
    x = np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float16)
    want, got = _run(model, x), _run(twin, x)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-2,
                               atol=2e-2)
    assert lower(twin, precision).SerializeToString() == model.SerializeToString()
