"""Why the weights inside an ``If``/``Loop``/``Scan`` body are not pruned, said precisely per node.

onnxprune collects calibration statistics by exposing tensors as graph outputs, times nodes in the
main graph, and rewrites main-graph nodes; a tensor inside a body exists only while the body runs
(once per iteration for a loop), so none of that reaches it. What can be done is to fold an ``If``
whose branch is decided by an input the user can pin (:mod:`onnxprune.graph.fold`); this module
finds which inputs decide each ``If`` and words the advice: pin that input with ``--fix``, or why
no pin helps.
"""

from __future__ import annotations

import logging
from collections import ChainMap
from collections.abc import Mapping

import numpy as np
import onnx

from onnxprune.graph.inline import subgraph_attrs
from onnxprune.graph.shapes import BoundInputs, with_bound_inputs

logger = logging.getLogger("onnxprune")

SMALL_INPUT_ELEMENTS = 16
"""An input of at most this many elements (or rank <= 1) looks like a setting one can pin, such as
a sample rate or a flag; a larger one is data, and a condition on it is decided per sample."""


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a body reads that it does not define: the outer-scope tensors it depends on."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    reads: set[str] = set()
    for node in graph.node:
        reads.update(i for i in node.input if i and i not in defined)
        for sub in subgraph_attrs(node):
            reads.update(n for n in _outer_reads(sub) if n not in defined)
        defined.update(node.output)
    reads.update(o.name for o in graph.output if o.name not in defined)
    return reads


def input_dependencies(model: onnx.ModelProto) -> dict[str, frozenset[str]]:
    """For every main-graph tensor, the graph inputs it is computed from (a body's outer reads
    count as inputs of the node that holds it)."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    deps: dict[str, frozenset[str]] = {
        i.name: frozenset([i.name]) for i in graph.input if i.name not in inits
    }
    for node in graph.node:
        reads = [i for i in node.input if i]
        for sub in subgraph_attrs(node):
            reads.extend(_outer_reads(sub))
        found = frozenset().union(*(deps.get(r, frozenset()) for r in reads))
        for out in node.output:
            deps[out] = found
    return deps


def _is_small(info: onnx.ValueInfoProto) -> bool:
    tensor_type = info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return True
    dims = tensor_type.shape.dim
    if len(dims) <= 1:
        return True
    sizes = [d.dim_value for d in dims]
    return all(s > 0 for s in sizes) and int(np.prod(sizes)) <= SMALL_INPUT_ELEMENTS


def _trip_count(node: onnx.NodeProto, graph: onnx.GraphProto) -> int | None:
    """A Loop's constant trip count (an initializer of ``graph``), else None."""
    if node.op_type != "Loop" or not node.input or not node.input[0]:
        return None
    for tensor in graph.initializer:
        if tensor.name == node.input[0]:
            return int(onnx.numpy_helper.to_array(tensor).reshape(-1)[0])
    return None


def _loop_trips(node: onnx.NodeProto, model: onnx.ModelProto) -> str:
    trips = _trip_count(node, model.graph)
    return f" (trip count {trips})" if trips is not None else ""


def _known(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tensor_type = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
        return None
    dims = tensor_type.shape.dim
    if all(d.HasField("dim_value") for d in dims):
        return tuple(d.dim_value for d in dims)
    return None


def body_node_shapes(
    model: onnx.ModelProto, bound: BoundInputs,
) -> dict[str, tuple[Mapping[str, tuple[int, ...]], int]]:
    """Per node inside a body: the tensor shapes visible in its scope at the bound input shapes,
    and how many times it runs per model run (the product of enclosing constant trip counts;
    1 when unknown), so the report can count the MACs left in bodies.

    Branches may reuse a local name with another shape, so each body gets its own scope.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(with_bound_inputs(model, bound),
                                                     data_prop=True)
    except Exception as exc:  # noqa: BLE001 - without shapes the MACs are just unknown
        logger.debug("shape inference of bodies failed: %s", exc)
        return {}
    found: dict[str, tuple[Mapping[str, tuple[int, ...]], int]] = {}

    def visit(graph: onnx.GraphProto, outer: Mapping[str, tuple[int, ...]], runs: int,
              top: bool) -> None:
        scope = ChainMap({}, outer)
        for value in [*graph.input, *graph.value_info, *graph.output]:
            if (known := _known(value)) is not None:
                scope[value.name] = known
        scope.update({t.name: tuple(t.dims) for t in graph.initializer})
        for node in graph.node:
            if not top:
                found[node.name] = (scope, runs)
            trips = _trip_count(node, graph)
            for sub in subgraph_attrs(node):
                visit(sub, scope, runs * (trips if trips else 1), False)

    visit(inferred.graph, {**bound.shapes()}, 1, True)
    return found


def explain_subgraph_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Per main-graph node holding a body (If/Loop/Scan), why the heavy nodes inside are not
    pruned and what, if anything, the user can do about it."""
    holders = [n for n in model.graph.node if subgraph_attrs(n)]
    if not holders:
        return {}
    deps = input_dependencies(model)
    inputs = {i.name: i for i in model.graph.input}
    reasons: dict[str, str] = {}
    for node in holders:
        where = f"{node.op_type} node {node.name!r}"
        if node.op_type == "If":
            reasons[node.name] = _if_reason(where, deps.get(node.input[0], frozenset()), inputs)
        else:
            reasons[node.name] = (
                f"inside the body of {where}{_loop_trips(node, model)}: not pruned; "
                "calibration statistics, timing and rewrites reach the main graph only, and a "
                f"{node.op_type} body's tensors exist once per iteration (--fix folds If nodes, "
                f"not {node.op_type} bodies)"
            )
    return reasons


def _if_reason(where: str, decided_by: frozenset[str],
               inputs: Mapping[str, onnx.ValueInfoProto]) -> str:
    head = f"inside a branch of {where}"
    if not decided_by:
        return (f"{head}: its condition depends on no input (pinned ones included) but was not "
                "folded to a constant: an op on its way is not evaluated (custom domain, random, "
                "or ONNX Runtime failed on it; see the notes)")
    small = sorted(n for n in decided_by if n in inputs and _is_small(inputs[n]))
    data = sorted(n for n in decided_by if n not in small)
    if not data:
        pins = " ".join(f"--fix {n}=VALUE" for n in small)
        names = ", ".join(repr(n) for n in small)
        return (f"{head}: the condition depends on input {names} at run time; pin it with "
                f"{pins} to fold the If and prune the branch taken")
    names = ", ".join(repr(n) for n in data)
    return (f"{head}: the condition is computed from input {names} at run time (data-"
            "dependent), so which branch runs is known only per sample; weights inside If "
            "branches are pruned only when --fix pins the condition's inputs")
