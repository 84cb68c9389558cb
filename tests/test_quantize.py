"""Prune -> quantize: ONNX Runtime's own quantizer quantizes every shrunken MatMul/Conv/Gemm.

A deployment engineer's next step after onnxprune is ``quantize_dynamic`` / ``quantize_static``.
The block rewrite turns a MatMul into Gather + a batched MatMul over a 3-D packed weight and a
Conv into Gather + a grouped Conv; the structure rewrite shrinks whole chains. Each is pruned here
with one layout everywhere (``sparsity`` mode, so the rewrite under test is the one applied), then
quantized dynamically, statically as QDQ and statically as QOperator; every weighted node of the
pruned model must come out quantized, the model must pass the checker and load in ORT, and its
outputs must stay as close to the quantized dense model's as the float pruned model is to the
dense one. Whether the quantized pruned model keeps its speedup is measured in
``benchmarks/prune_quantize.py``, not asserted here.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from onnxprune import PruneConfig
from onnxprune.pipeline.prune import prune

ROOT = Path(__file__).resolve().parents[1]
WEIGHTED = ("MatMul", "Gemm", "Conv")
# What each weighted op becomes in each quantized form.
QUANTIZED_OPS = {
    "dynamic": ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"),
    "qoperator": ("QLinearMatMul", "QLinearConv", "QGemm"),
}


class BatchReader(CalibrationDataReader):
    """ORT's reader contract over the shipped calibration batches (first 2 batches, 16 rows)."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        feeds = [{"input": b["input"][i:i + 16]} for b in batches[:2]
                 for i in range(0, len(b["input"]) - 15, 16)]
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def weighted_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMul/Gemm/Conv nodes whose second input is a constant weight (what a quantizer takes)."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n for n in model.graph.node
            if n.op_type in WEIGHTED and len(n.input) > 1 and n.input[1] in constants]


def float_output(path: Path, feed: np.ndarray) -> np.ndarray:
    """The model's first float output (the skl2onnx MLP's first output is an int label)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = next(o.name for o in session.get_outputs() if o.type == "tensor(float)")
    return session.run([name], {"input": feed})[0]


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def quantize(source: Path, target: Path, form: str, batches: list[dict]) -> onnx.ModelProto:
    if form == "dynamic":
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
    else:
        quantize_static(source, target, BatchReader(batches),
                        quant_format=QuantFormat.QDQ if form == "qdq" else QuantFormat.QOperator)
    model = onnx.load(target)
    onnx.checker.check_model(model)
    return model


def assert_all_quantized(pruned: onnx.ModelProto, quantized: onnx.ModelProto, form: str) -> None:
    weighted = weighted_nodes(pruned)
    ops = Counter(n.op_type for n in quantized.graph.node)
    if form in QUANTIZED_OPS:
        assert sum(ops[op] for op in QUANTIZED_OPS[form]) == len(weighted), dict(ops)
        assert not weighted_nodes(quantized), "a float MatMul/Conv/Gemm was left unquantized"
        return
    # QDQ keeps the float ops, each reading its activation and its weight through DequantizeLinear.
    produced_by = {o: n.op_type for n in quantized.graph.node for o in n.output}
    compute = [n for n in quantized.graph.node if n.op_type in WEIGHTED]
    assert len(compute) == len(weighted)
    for node in compute:
        assert [produced_by.get(i) for i in node.input[:2]] == ["DequantizeLinear"] * 2, node.name


CASES = [("digits_mlp", (64, 64), "block"), ("digits_mlp", (64, 64), "structure"),
         ("digits_cnn", (64, 1, 8, 8), "block"), ("digits_cnn", (64, 1, 8, 8), "structure")]


@pytest.mark.parametrize(("name", "shape", "layout"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_pruned_model_quantizes_with_onnxruntime(tmp_path, name, shape, layout):
    dense_path = ROOT / "models" / f"{name}.onnx"
    calib = ROOT / "calibration" / name
    pruned_path = tmp_path / "pruned.onnx"
    report = prune(dense_path, pruned_path, PruneConfig(
        sparsity=0.5, layouts=(layout,), calib_dir=calib, shapes={"input": shape}, threads=2,
        verify_sessions=1, cache_dir=tmp_path / "cache",
        max_channel_error=2.0))  # half of the MLP in blocks costs points; quantizing is tested
    assert report.written and any(layer.option.layout == layout for layer in report.layers)
    pruned = onnx.load(pruned_path)
    assert weighted_nodes(pruned)
    batches = [dict(np.load(p)) for p in sorted(calib.glob("*.npz"))]
    feed = batches[-1]["input"][:32]  # a batch the static calibration did not read
    gap_float = relative(float_output(pruned_path, feed), float_output(dense_path, feed))
    for form in ("dynamic", "qdq", "qoperator"):
        q_dense, q_pruned = tmp_path / f"dense_{form}.onnx", tmp_path / f"pruned_{form}.onnx"
        quantize(dense_path, q_dense, form, batches)
        assert_all_quantized(pruned, quantize(pruned_path, q_pruned, form, batches), form)
        out_q_pruned = float_output(q_pruned, feed)
        # Quantization costs the pruned model about what it costs the dense one ...
        assert relative(out_q_pruned, float_output(pruned_path, feed)) < 0.03, form
        # ... so the quantized pair is as close as the float pair (plus quantization noise).
        assert relative(out_q_pruned, float_output(q_dense, feed)) < gap_float + 0.03, form
