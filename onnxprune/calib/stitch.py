"""The stitched model: the original graph with every candidate's weight turned into an input.

One ONNX Runtime session over this model serves every pass that needs "the model with these
weights": collecting Hessians with dense weights, collecting them again with already-pruned weights
(sequential mode), scoring an allocation by its outputs (SPDY's search), and checking that the
materialized model equals the masked-dense one. Feeding weights avoids rebuilding and reloading a
model per evaluation.

Each candidate site is rewired to read the canonical weight (MatMul/Gemm W[K, N], Conv
W[O, C, kh, kw]) from a graph input named ``onnxprune_w<i>``; Gemm nodes get ``transB = 0`` and
``alpha = 1`` because both are folded into the canonical weight. Activations of the sites can be
exposed as extra outputs.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxprune.common.runtime import RuntimeConfig, make_session
from onnxprune.graph.candidates import Candidate
from onnxprune.graph.load import stamp_ir_version

logger = logging.getLogger("onnxprune")


def weight_input_name(index: int) -> str:
    return f"onnxprune_w{index}"


def build_stitched_model(
    model: onnx.ModelProto, candidates: Sequence[Candidate], expose: Iterable[str] = ()
) -> onnx.ModelProto:
    """A copy of ``model`` reading candidate weights from inputs and exposing ``expose`` tensors."""
    stitched = copy.deepcopy(model)
    graph = stitched.graph
    by_node = {site.node: (i, c) for i, c in enumerate(candidates) for site in c.sites}
    for node in graph.node:
        if node.name not in by_node:
            continue
        index, cand = by_node[node.name]
        node.input[1] = weight_input_name(index)
        if node.op_type == "Gemm":
            kept = [a for a in node.attribute if a.name not in ("transB", "alpha")]
            del node.attribute[:]
            node.attribute.extend(kept)
    for index, cand in enumerate(candidates):
        graph.input.append(helper.make_tensor_value_info(
            weight_input_name(index), TensorProto.FLOAT, list(cand.weight.shape)))
    existing = {o.name for o in graph.output}
    for name in dict.fromkeys(expose):
        if name not in existing:
            graph.output.append(onnx.ValueInfoProto(name=name))
    return stamp_ir_version(stitched)


@dataclass
class StitchedRunner:
    """A session over the stitched model plus the default (dense) weights to feed it.

    Args:
        model: the original model (unmodified).
        candidates: the candidates whose weights are fed.
        expose: tensor names to add as outputs (e.g. site activations).
        runtime: session settings (calibration runs on the CPU EP by default: numerics, not speed).
    """

    model: onnx.ModelProto
    candidates: Sequence[Candidate]
    expose: Sequence[str] = ()
    runtime: RuntimeConfig | None = None

    def __post_init__(self) -> None:
        stitched = build_stitched_model(self.model, self.candidates, self.expose)
        self.session = make_session(stitched, self.runtime)
        self.model_outputs = [o.name for o in self.model.graph.output]
        self.dense_weights = {
            weight_input_name(i): c.weight for i, c in enumerate(self.candidates)
        }
        self._index = {c.name: i for i, c in enumerate(self.candidates)}

    def run(
        self, feed: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray] | None = None,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one batch; ``weights`` maps candidate names to replacement canonical weights."""
        full = dict(feed)
        full.update(self.dense_weights)
        for name, value in (weights or {}).items():
            full[weight_input_name(self._index[name])] = value.astype(np.float32, copy=False)
        names = list(outputs) if outputs is not None else self.model_outputs
        return dict(zip(names, self.session.run(names, full), strict=True))
