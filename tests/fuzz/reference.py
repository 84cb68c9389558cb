"""The masked-dense reference of a pruning run, and the comparison against it.

The reference is the input model with each candidate's chosen weight written into its nodes and
run in ONNX Runtime: what the pruned model must compute. The chosen weights come from
:class:`RecordingTiming`, which sees every model the pipeline measures, so the test can find the
weights of the one that was written.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxprune.graph.candidates import ensure_node_names, find_candidates
from onnxprune.graph.load import stamp_ir_version
from onnxprune.graph.shapes import bind_input_shapes
from onnxprune.latency.synthetic import SyntheticTiming
from onnxprune.layouts.base import solution_weights

PRUNE_BATCH = 2
"""The batch size the fuzzer and the export tests prune at (outputs are compared at others)."""


class RecordingTiming(SyntheticTiming):
    """Synthetic timing that keeps every measured model with its chosen weights, so the test can
    find the weights of the model that was written and build its masked-dense reference."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.measured: dict[bytes, dict[str, np.ndarray]] = {}

    def speed(self, dense, pruned, feeds, runtime, **kwargs):
        chosen = kwargs.get("chosen") or {}
        key = pruned if isinstance(pruned, bytes) else pruned.SerializeToString()
        self.measured[key] = solution_weights(chosen)
        return super().speed(dense, pruned, feeds, runtime, **kwargs)


def masked_dense(model: onnx.ModelProto, shapes: dict, weights: dict[str, np.ndarray]
                 ) -> onnx.ModelProto:
    """The input model with each candidate's chosen canonical weight written into its nodes.

    Canonical weights are MatMul/Gemm W[K, N] with Gemm's transB and alpha folded in, Conv
    W[O, C/g, kh, kw]; the nodes are pointed at them directly (Gemm's transB and alpha reset).
    """
    reference = copy.deepcopy(model)
    ensure_node_names(reference)
    analysis = find_candidates(reference, bind_input_shapes(
        reference, {n: (PRUNE_BATCH, *s[1:]) for n, s in shapes.items()}))
    nodes = {n.name: n for n in reference.graph.node}
    for cand in analysis.candidates:
        if cand.name not in weights:
            continue
        tensor = numpy_helper.from_array(weights[cand.name].astype(np.float32),
                                         f"masked/{cand.name}")
        reference.graph.initializer.append(tensor)
        for site in cand.sites:
            node = nodes[site.node]
            node.input[1] = tensor.name
            if node.op_type == "Gemm":
                kept = [a for a in node.attribute if a.name not in ("transB", "alpha")]
                del node.attribute[:]
                node.attribute.extend(kept)
    return stamp_ir_version(reference)


def run_model(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def assert_matches_masked_dense(out: onnx.ModelProto, reference: onnx.ModelProto,
                                feeds: list[dict[str, np.ndarray]]) -> None:
    """Same outputs (to float tolerance, relative to each output's largest value) on ``feeds``."""
    for feed in feeds:
        batch = len(next(iter(feed.values())))
        got, want = run_model(out, feed), run_model(reference, feed)
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert a.shape == b.shape
            scale = max(float(np.max(np.abs(b))), 1e-3)
            assert float(np.max(np.abs(a - b))) <= 2e-3 * scale, (batch, np.abs(a - b).max())
