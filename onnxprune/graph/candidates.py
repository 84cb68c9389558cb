"""Finding the prunable nodes of a model, and saying why every other heavy node is left alone.

A node is prunable when it is a MatMul, Gemm or (group = 1, 2-D) Conv whose weight is a constant
reachable at load time: an initializer, a ``Constant`` node, or either of those seen through
Identity / Transpose / Cast. Nodes whose weights resolve to the same stored tensor through the same
chain form one :class:`Candidate` (an unrolled LSTM shares one weight across many Gemms), because a
weight can be pruned only once. Every other compute-heavy node becomes a :class:`SkippedNode` with a
reason string: a silent skip is a bug.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.graph.inline import subgraph_attrs
from onnxprune.graph.shapes import BoundInputs, infer_tensor_shapes
from onnxprune.graph.subgraphs import body_node_shapes, explain_subgraph_nodes

logger = logging.getLogger("onnxprune")

PRUNABLE_OPS = ("MatMul", "Gemm", "Conv")
QUANTIZED_OPS = {
    "MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "QGemm", "MatMulNBits", "MatMulBnb4", "QAttention", "QLinearAdd",
}
HEAVY_OPS = {*PRUNABLE_OPS, *QUANTIZED_OPS, "ConvTranspose", "Einsum", "FusedMatMul", "Attention",
             "FusedConv", "FusedGemm", "LSTM", "GRU", "RNN"}
SUBGRAPH_OPS = {"If", "Loop", "Scan"}
_PASS_THROUGH = {"Identity", "Transpose", "Cast"}


@dataclass(frozen=True)
class NodeSite:
    """One node of a candidate group, where it reads its activation and writes its output.

    Attributes:
        node: the node's name (unique; see :func:`ensure_node_names`).
        activation: name of the activation input (X of ``Y = X·W``; Conv's X).
        output: name of the node's output Y.
        input_shape: concrete activation shape at the bound input shapes.
        output_shape: concrete output shape.
        macs: multiply-accumulates of this node at those shapes.
    """

    node: str
    activation: str
    output: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int


class AttachedStructure(Protocol):
    """The channel structure a consumer candidate ends, as the stages after discovery read it.

    :class:`onnxprune.structures.context.StructureContext` is its one implementation. It is a
    protocol here so that this module, which the structures stage builds on, need not import it
    (the two would form an import cycle).
    """

    @property
    def structure(self) -> Any:
        """The :class:`~onnxprune.structures.types.Structure` itself."""

    @property
    def producers(self) -> tuple[Candidate, ...]:
        """Its producer candidates (Q, K and V for attention heads)."""

    @property
    def producer(self) -> Candidate:
        """The first producer."""

    @property
    def isolated(self) -> onnx.ModelProto:
        """Producer, members and consumer alone, dense: what the latency stage times."""

    @property
    def signature(self) -> str:
        """Digest of the isolated subgraph without weight values (identical blocks time once)."""


@dataclass(frozen=True, eq=False)
class Candidate:
    """A prunable weight and the node(s) that use it.

    The weight is kept in one canonical orientation so layouts never look at Gemm attributes:
    MatMul/Gemm: ``weight`` is W[K, N] with ``Y = X·W + bias`` (Gemm's transB and alpha are folded
    in, ``bias`` is beta·C); Conv: ``weight`` is W[O, C, kh, kw] and ``bias`` is [O].

    Attributes:
        name: the group's name (its first node's name).
        op: "MatMul", "Gemm" or "Conv".
        sites: the nodes sharing the weight.
        weight: canonical float32 weight (see above).
        bias: canonical float32 bias or None.
        weight_source: name of the stored tensor (initializer or Constant output).
        weight_via: the ops between the stored tensor and the node, e.g. ("Transpose",).
        attrs: Gemm: ``trans_a`` (0/1). Conv: ``kernel``, ``strides``, ``pads`` [t, l, b, r],
            ``dilations`` (auto_pad resolved to explicit pads).
        structure: the channel structure this candidate is the consumer of, when one was found
            (:mod:`onnxprune.structures`): its options are then that structure's widths.
    """

    name: str
    op: str
    sites: tuple[NodeSite, ...]
    weight: np.ndarray
    bias: np.ndarray | None
    weight_source: str
    weight_via: tuple[str, ...] = ()
    attrs: Mapping[str, object] = field(default_factory=dict)
    structure: AttachedStructure | None = None

    @property
    def macs(self) -> int:
        return sum(site.macs for site in self.sites)

    @property
    def reduction_dim(self) -> int:
        """K: the weight's reduction size (Conv: input channels × kernel taps)."""
        if self.op == "Conv":
            return int(np.prod(self.weight.shape[1:]))
        return int(self.weight.shape[0])

    @property
    def output_dim(self) -> int:
        """N (MatMul/Gemm) or O (Conv): the number of output neurons / channels."""
        return int(self.weight.shape[0] if self.op == "Conv" else self.weight.shape[1])

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(site.node for site in self.sites)


@dataclass(frozen=True)
class SkippedNode:
    """A compute-heavy node that will not be pruned, and why."""

    node: str
    op: str
    reason: str
    macs: int = 0


@dataclass(frozen=True)
class GraphAnalysis:
    """Result of :func:`find_candidates`."""

    candidates: tuple[Candidate, ...]
    skipped: tuple[SkippedNode, ...]
    bound: BoundInputs
    total_macs: int

    def share(self, candidate: Candidate) -> float:
        """The candidate's fraction of all MACs of the model's heavy nodes."""
        return candidate.macs / self.total_macs if self.total_macs else 0.0


def ensure_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node (subgraphs included) a unique, non-empty name, in place.

    Candidates, timings, profiles and reports all refer to nodes by name, so names must exist and
    be unique. Existing unique names are kept.
    """
    seen: set[str] = set()
    counter = 0

    def visit(graph: onnx.GraphProto) -> None:
        nonlocal counter
        for node in graph.node:
            name = node.name
            if not name or name in seen:
                base = name or f"{node.op_type}"
                while True:
                    counter += 1
                    candidate = f"{base}_{counter}"
                    if candidate not in seen:
                        break
                node.name = candidate
            seen.add(node.name)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        visit(sub)

    visit(model.graph)
    return model


class _ConstantResolver:
    """Resolve a tensor name to a constant value, following Identity/Transpose/Cast."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph_inputs = {i.name for i in model.graph.input}
        self.initializers = {
            t.name: t for t in model.graph.initializer if t.name not in graph_inputs
        }
        self.overridable = {t.name for t in model.graph.initializer if t.name in graph_inputs}
        self.graph_input_names = graph_inputs - self.overridable
        # Nodes are topologically sorted (an ONNX requirement), so one forward pass finds every
        # tensor computed from a graph input.
        self._activations = set(self.graph_input_names) | self.overridable
        for node in model.graph.node:
            if any(i in self._activations for i in node.input if i):
                self._activations.update(node.output)
        self.producers = {out: node for node in model.graph.node for out in node.output}
        self._cache: dict[str, np.ndarray] = {}

    def resolve(self, name: str) -> tuple[np.ndarray, str, tuple[str, ...]] | None:
        """(value, stored tensor name, chain of ops) or None when computed at run time."""
        chain: list[onnx.NodeProto] = []
        current = name
        while True:
            if current in self.initializers:
                value = self._value_of_initializer(current)
                break
            node = self.producers.get(current)
            if node is None:
                return None
            if node.op_type == "Constant":
                value = _constant_node_value(node)
                if value is None:
                    return None
                break
            if node.op_type in _PASS_THROUGH and node.input:
                chain.append(node)
                current = node.input[0]
                continue
            return None
        for node in reversed(chain):
            value = _apply_pass_through(node, value)
        return value, current, tuple(n.op_type for n in reversed(chain))

    def _value_of_initializer(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = numpy_helper.to_array(self.initializers[name])
        return self._cache[name]

    def depends_on_inputs(self, name: str) -> bool:
        """Whether tensor ``name`` is computed from a graph input (an activation)."""
        return name in self._activations

    def producer_op(self, name: str) -> str | None:
        node = self.producers.get(name)
        return node.op_type if node is not None else None


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None


def _apply_pass_through(node: onnx.NodeProto, value: np.ndarray) -> np.ndarray:
    if node.op_type == "Identity":
        return value
    if node.op_type == "Transpose":
        perm = _attr(node, "perm", None)
        return np.transpose(value, perm) if perm is not None else value.T
    to = _attr(node, "to", onnx.TensorProto.FLOAT)
    return value.astype(helper.tensor_dtype_to_np_dtype(to))


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _conv_pads(
    node: onnx.NodeProto, in_hw: tuple[int, int], kernel: tuple[int, int],
    strides: tuple[int, int], dilations: tuple[int, int],
) -> list[int]:
    """Explicit [top, left, bottom, right] pads, resolving ``auto_pad``."""
    auto_pad = _attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad in ("NOTSET", ""):
        pads = list(_attr(node, "pads", [0, 0, 0, 0]))
        return pads
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    begins, ends = [], []
    for size, k, s, d in zip(in_hw, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        if auto_pad == "SAME_UPPER":
            begins.append(small)
            ends.append(large)
        else:
            begins.append(large)
            ends.append(small)
    return begins + ends


def _heavy_macs(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Best-effort MACs of a heavy node (0 when shapes are unknown)."""
    try:
        out = shapes.get(node.output[0])
        if out is None:
            return 0
        if node.op_type in ("MatMul", "MatMulInteger", "FusedMatMul", "QLinearMatMul"):
            a = shapes[node.input[0]]
            return int(np.prod(out)) * int(a[-1])
        if node.op_type in ("Gemm", "QGemm"):
            a = shapes[node.input[0]]
            k = a[0] if _attr(node, "transA", 0) else a[-1]
            return int(np.prod(out)) * int(k)
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv", "FusedConv", "ConvTranspose"):
            w_index = 3 if node.op_type == "QLinearConv" else 1
            w = shapes[node.input[w_index]]
            if node.op_type == "ConvTranspose":
                return int(np.prod(shapes[node.input[0]])) * int(np.prod(w[1:]))
            return int(np.prod(out)) * int(np.prod(w[1:]))
    except (KeyError, IndexError):
        return 0
    return 0


def find_candidates(model: onnx.ModelProto, bound: BoundInputs) -> GraphAnalysis:
    """List the prunable weights of ``model`` at the bound input shapes.

    Args:
        model: the model; nodes must have unique names (call :func:`ensure_node_names` first).
        bound: concrete input shapes from :func:`~onnxprune.graph.shapes.bind_input_shapes`.

    Returns:
        The candidates (largest MACs first), the skipped heavy nodes with reasons, and the total
        MACs of all heavy nodes.
    """
    resolver = _ConstantResolver(model)
    activations = [
        node.input[0] for node in model.graph.node if node.op_type in HEAVY_OPS and node.input
    ]
    outputs = [node.output[0] for node in model.graph.node if node.op_type in HEAVY_OPS]
    shapes = infer_tensor_shapes(model, bound, required=[*activations, *outputs])

    skipped: list[SkippedNode] = []
    groups: dict[tuple, list[tuple[NodeSite, np.ndarray, dict]]] = {}
    biases: dict[tuple, list[np.ndarray | None]] = {}
    total_macs = 0

    body_reasons = explain_subgraph_nodes(model)
    body_shapes = body_node_shapes(model, bound) if body_reasons else {}
    for node in model.graph.node:
        if node.name in body_reasons:
            per_body = [_subgraph_skips(body, body_reasons[node.name], model, body_shapes)
                        for body in subgraph_attrs(node)]
            skipped.extend(s for inside in per_body for s in inside)
            # One If branch runs per model run; every other body's nodes all run.
            sums = [sum(s.macs for s in inside) for inside in per_body]
            total_macs += (max(sums) if node.op_type == "If" else sum(sums)) if sums else 0
            continue
        if node.op_type not in HEAVY_OPS:
            continue
        macs = _heavy_macs(node, shapes)
        total_macs += macs
        if node.domain not in ("", "ai.onnx") or node.op_type not in PRUNABLE_OPS:
            reason = (
                "quantized op: onnxprune prunes float weights only"
                if node.op_type in QUANTIZED_OPS
                else f"op {node.op_type} is not supported for pruning"
            )
            skipped.append(SkippedNode(node.name, node.op_type, reason, macs))
            continue
        result = _analyse_node(node, resolver, shapes, macs)
        if isinstance(result, SkippedNode):
            skipped.append(result)
            continue
        site, weight, bias, key, attrs = result
        groups.setdefault(key, []).append((site, weight, attrs))
        biases.setdefault(key, []).append(bias)

    candidates = []
    for key, members in groups.items():
        # Nodes sharing one weight but with different biases or attributes still share the
        # weight: the bias is kept per node by the rewrite, so only weight and attrs must agree.
        first_site, weight, attrs = members[0]
        same = [m for m in members if m[2] == attrs]
        for other in members:
            if other[2] != attrs:
                skipped.append(SkippedNode(
                    other[0].node, key[2],
                    "shares its weight with a node that has different attributes", other[0].macs,
                ))
        bias_list = [b for (m, b) in zip(members, biases[key], strict=True) if m[2] == attrs]
        bias = bias_list[0]
        if any(not _same_array(b, bias) for b in bias_list[1:]):
            for site, _, _ in same:
                skipped.append(SkippedNode(
                    site.node, key[2],
                    "shares its weight with nodes that have different biases", site.macs,
                ))
            continue
        candidates.append(Candidate(
            name=first_site.node, op=key[2], sites=tuple(m[0] for m in same),
            weight=np.ascontiguousarray(weight, dtype=np.float32), bias=bias,
            weight_source=key[0], weight_via=key[1], attrs=attrs,
        ))
    candidates.sort(key=lambda c: -c.macs)
    return GraphAnalysis(tuple(candidates), tuple(skipped), bound, total_macs)


def _same_array(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _subgraph_skips(body: onnx.GraphProto, reason: str, model: onnx.ModelProto,
                    shapes: Mapping[str, tuple[Mapping[str, tuple[int, ...]], int]],
                    ) -> list[SkippedNode]:
    """Heavy nodes inside one If branch or Loop/Scan body (nested ones included): reported with
    their weight, their MACs (per model run, when the shapes are known) and ``reason``
    (:func:`~onnxprune.graph.subgraphs.explain_subgraph_nodes`), never pruned."""
    found = []
    weights: dict[str, list[int]] = {}

    def visit(graph: onnx.GraphProto) -> None:
        weights.update({t.name: list(t.dims) for t in graph.initializer})
        for inner in graph.node:
            if inner.op_type in HEAVY_OPS:
                weight = inner.input[1] if len(inner.input) > 1 else ""
                dims = weights.get(weight)
                what = f"weight {weight!r}" + (
                    f" [{'x'.join(map(str, dims))}]" if dims is not None else "")
                scope, runs = shapes.get(inner.name, ({}, 1))
                found.append(SkippedNode(inner.name, inner.op_type, f"{what} {reason}",
                                         _heavy_macs(inner, scope) * runs))
            for sub in subgraph_attrs(inner):
                visit(sub)

    weights.update({t.name: list(t.dims) for t in model.graph.initializer})
    visit(body)
    return found


def _analyse_node(
    node: onnx.NodeProto,
    resolver: _ConstantResolver,
    shapes: Mapping[str, tuple[int, ...]],
    macs: int,
) -> SkippedNode | tuple[NodeSite, np.ndarray, np.ndarray | None, tuple, dict]:
    """Decide whether one MatMul/Gemm/Conv is prunable; canonicalize its weight if so."""

    def skip(reason: str) -> SkippedNode:
        return SkippedNode(node.name, node.op_type, reason, macs)

    if len(node.input) < 2:
        return skip("malformed node (fewer than two inputs)")
    act_name, weight_name = node.input[0], node.input[1]
    weight_info = resolver.resolve(weight_name)
    act_info = resolver.resolve(act_name)
    if weight_info is None:
        if weight_name in resolver.overridable:
            return skip("weight is an initializer that is also a graph input (can be overridden)")
        producer = resolver.producer_op(weight_name)
        if producer == "DequantizeLinear":
            return skip("weight is quantized (DequantizeLinear of an integer tensor)")
        if act_info is not None and node.op_type == "MatMul":
            return skip("the constant is the left operand (Y = W·X); only X·W is supported")
        if resolver.depends_on_inputs(weight_name):
            return skip("both operands are computed at run time (activation x activation, "
                        "e.g. attention scores): there is no weight to prune")
        return skip("weight is computed at run time" + (f" (by {producer})" if producer else ""))
    if act_info is not None:
        return skip("both operands are constant (fold constants first)")
    value, source, via = weight_info
    if value.dtype != np.float32:
        return skip(f"weight dtype {value.dtype} is not supported (float32 only)")
    act_shape = shapes.get(act_name)
    out_shape = shapes.get(node.output[0])
    if act_shape is None or out_shape is None:
        return skip("activation shape is unknown at the given input shapes")
    attrs: dict[str, object] = {}
    bias: np.ndarray | None = None

    if node.op_type == "MatMul":
        if value.ndim != 2:
            return skip(f"weight has rank {value.ndim}; only 2-D MatMul weights are pruned")
        if len(act_shape) < 2:
            return skip("1-D activation; only rank >= 2 activations are supported")
        weight = value
    elif node.op_type == "Gemm":
        if value.ndim != 2:
            return skip(f"weight has rank {value.ndim}")
        alpha = float(_attr(node, "alpha", 1.0))
        beta = float(_attr(node, "beta", 1.0))
        weight = (value.T if _attr(node, "transB", 0) else value) * np.float32(alpha)
        attrs["trans_a"] = int(_attr(node, "transA", 0))
        n = weight.shape[1]
        if len(node.input) > 2 and node.input[2]:
            c_info = resolver.resolve(node.input[2])
            if c_info is None:
                return skip("Gemm's C is computed at run time (not a bias)")
            c_value = c_info[0].astype(np.float32)
            if c_value.size == 1:
                bias = np.full(n, float(c_value.reshape(())) * beta, dtype=np.float32)
            elif c_value.size == n and (c_value.ndim == 1 or c_value.shape[-1] == n):
                bias = (c_value.reshape(n) * np.float32(beta)).astype(np.float32)
            else:
                return skip(f"Gemm's C has shape {list(c_value.shape)}, not a bias vector")
    else:  # Conv
        group = int(_attr(node, "group", 1))
        if value.ndim != 4:
            return skip(f"{value.ndim - 2}-D convolution; only 2-D convs are pruned")
        if group != 1:
            kind = "depthwise" if group == value.shape[0] and value.shape[1] == 1 else "grouped"
            return skip(f"{kind} conv (group={group}); only group=1 convs are pruned")
        kernel = tuple(int(k) for k in value.shape[2:])
        strides = tuple(_attr(node, "strides", [1, 1]))
        dilations = tuple(_attr(node, "dilations", [1, 1]))
        pads = _conv_pads(node, tuple(act_shape[2:]), kernel, strides, dilations)
        attrs = {"kernel": kernel, "strides": strides, "pads": tuple(pads), "dilations": dilations}
        weight = value
        if len(node.input) > 2 and node.input[2]:
            b_info = resolver.resolve(node.input[2])
            if b_info is None:
                return skip("Conv bias is computed at run time")
            bias = b_info[0].astype(np.float32).reshape(-1)

    site = NodeSite(node.name, act_name, node.output[0], tuple(act_shape), tuple(out_shape), macs)
    # Nodes group only when their canonical weights are identical: same stored tensor, same chain
    # of ops, and (Gemm) the same transB and alpha folded in.
    gemm_sig = (int(_attr(node, "transB", 0)), float(_attr(node, "alpha", 1.0)))
    key = (source, via, node.op_type, gemm_sig if node.op_type == "Gemm" else None)
    return site, weight, bias, key, attrs
