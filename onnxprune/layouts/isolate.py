"""One candidate node alone, at its real shapes, materialized with one option: what gets timed.

The latency stage times every (layout, shape, level) option of every prunable node on the graph
that will actually be emitted, in isolation. Timing depends on the structure of the materialized
subgraph (shapes, block counts, kept channels), not on the weight values, so the isolated model
uses random weights and a random mask of the option's family (picked by the same pickers as the
real solver, without the OBS update).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.candidates import Candidate
from onnxprune.graph.load import stamp_ir_version
from onnxprune.layouts.base import DENSE, LayoutOption, to_rows
from onnxprune.layouts.registry import get_layout
from onnxprune.reconstruct.obs import Solution

logger = logging.getLogger("onnxprune")

ISOLATED_OPSET = 17


def isolated_model(
    candidate: Candidate, option: LayoutOption, site_index: int = 0, seed: int = 0
) -> onnx.ModelProto:
    """A model computing only ``candidate.sites[site_index]``, materialized with ``option``.

    The model has one input (the site's activation, at the site's concrete ``input_shape``) and
    one output (the site's output). The node is written in canonical form: MatMul (+ Add when the
    candidate has a bias), Gemm with ``transA`` as in the original and alpha/transB folded, or
    Conv with the original kernel, strides, pads and dilations. Weights are random.

    Args:
        candidate: the candidate.
        option: the option to materialize (``DENSE`` for the baseline).
        site_index: which node of a shared-weight group (they may differ in input shape).
        seed: seed of the random weights and mask.

    Returns:
        A checked model at the IR version the installed ORT reads.
    """
    rng = np.random.default_rng(seed)
    site = candidate.sites[site_index]
    weight = rng.standard_normal(candidate.weight.shape).astype(np.float32)
    bias = None
    if candidate.bias is not None:
        bias = rng.standard_normal(candidate.bias.shape).astype(np.float32)
    isolated = dataclasses.replace(
        candidate,
        name=site.node,
        sites=(site,),
        weight=weight,
        bias=bias,
        weight_source=f"{site.node}/weight",
        weight_via=(),
    )
    model, isolated = _base_model(isolated)
    if option.layout == DENSE.layout:
        return model
    layout = get_layout(option.layout)
    solver = RandomMaskSolver(to_rows(isolated, weight), rng)
    pruned = layout.solve(isolated, solver, option)
    graph = gs.import_onnx(model)
    layout.materialize(graph, isolated, pruned)
    graph.cleanup().toposort()
    out = stamp_ir_version(gs.export_onnx(graph))
    onnx.checker.check_model(out)
    return out


def dense_isolated_model(
    candidate: Candidate, site_index: int = 0, seed: int = 0
) -> onnx.ModelProto:
    """The dense baseline of :func:`isolated_model`."""
    return isolated_model(candidate, DENSE, site_index, seed)


def _base_model(candidate: Candidate) -> tuple[onnx.ModelProto, Candidate]:
    """The dense one-node model of a one-site candidate (and the candidate matching it)."""
    site = candidate.sites[0]
    x = helper.make_tensor_value_info(site.activation, TensorProto.FLOAT, list(site.input_shape))
    y = helper.make_tensor_value_info(site.output, TensorProto.FLOAT, list(site.output_shape))
    w_name = candidate.weight_source
    inits = [numpy_helper.from_array(candidate.weight, w_name)]
    nodes = []
    if candidate.op == "Conv":
        attrs = candidate.attrs
        inputs = [site.activation, w_name]
        if candidate.bias is not None:
            inits.append(numpy_helper.from_array(candidate.bias, f"{site.node}/bias"))
            inputs.append(f"{site.node}/bias")
        nodes.append(
            helper.make_node(
                "Conv",
                inputs,
                [site.output],
                name=site.node,
                kernel_shape=list(attrs["kernel"]),
                strides=list(attrs["strides"]),
                pads=list(attrs["pads"]),
                dilations=list(attrs["dilations"]),
                group=1,
            )
        )
    elif candidate.op == "Gemm":
        inputs = [site.activation, w_name]
        if candidate.bias is not None:
            inits.append(numpy_helper.from_array(candidate.bias, f"{site.node}/bias"))
            inputs.append(f"{site.node}/bias")
        nodes.append(
            helper.make_node(
                "Gemm",
                inputs,
                [site.output],
                name=site.node,
                transA=int(candidate.attrs.get("trans_a", 0)),
            )
        )
    else:
        if candidate.bias is not None:
            mm_out = f"{site.node}/matmul_out"
            inits.append(numpy_helper.from_array(candidate.bias, f"{site.node}/bias"))
            nodes.append(
                helper.make_node("MatMul", [site.activation, w_name], [mm_out], name=site.node)
            )
            nodes.append(
                helper.make_node(
                    "Add",
                    [mm_out, f"{site.node}/bias"],
                    [site.output],
                    name=f"{site.node}/bias_add",
                )
            )
            # The Add is not part of the node: the rewrite sees a bias-free MatMul.
            site = dataclasses.replace(site, output=mm_out)
            candidate = dataclasses.replace(candidate, sites=(site,), bias=None)
        else:
            nodes.append(
                helper.make_node("MatMul", [site.activation, w_name], [site.output], name=site.node)
            )
    graph = helper.make_graph(nodes, f"isolated_{site.node}", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ISOLATED_OPSET)])
    model = stamp_ir_version(model)
    onnx.checker.check_model(model)
    return model, candidate


class RandomMaskSolver:
    """Stand-in for :class:`~onnxprune.reconstruct.obs.ObsSolver` with the same seam: a layout's
    mask picker gets random scores and the mask is applied without any update (timing only;
    ``err`` is 0). It knows no layout: what it picks is whatever the layout's picker returns.

    Args:
        W: [N outputs, K reduction] weight in OBS orientation.
        rng: random generator for the scores.
    """

    blocksize = 128

    def __init__(self, W: np.ndarray, rng: np.random.Generator) -> None:
        self._W = np.asarray(W, dtype=np.float32)
        self._rng = rng
        self.rows, self.columns = self._W.shape

    def _apply(self, mask: np.ndarray) -> Solution:
        return Solution(mask, np.where(mask, self._W, 0.0).astype(np.float32), 0.0)

    def prune(self, pick_mask, window: int | None = None) -> Solution:
        """The picker on random saliency over all of K at once (``window`` changes nothing)."""
        return self._apply(np.asarray(pick_mask(self._rng.random(self._W.shape)), dtype=bool))

    def keep_rows(self, pick_rows) -> Solution:
        rows = np.asarray(pick_rows(self._rng.random(self._W.shape[0])), dtype=bool)
        return self._apply(np.broadcast_to(rows[:, None], self._W.shape).copy())

    def solve_magnitude(self, mask: np.ndarray) -> Solution:
        return self._apply(np.asarray(mask, dtype=bool))
