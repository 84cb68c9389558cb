"""Attention heads, matched as a pattern: a head is a channel of ``head_dim`` columns.

From each Softmax over ``[batch, heads, queries, keys]`` scores back through the scale and mask to
``Q·Kᵀ``, from Q, K and V through their Transposes, head-splitting Reshape and bias to their
projections, and from ``P·V`` through the head-merging Transpose and Reshape to the output
projection. A head is then a channel of ``head_dim`` columns in Q, K, V and ``head_dim`` rows in
the output projection; removing it shrinks the attention core with it. Reshape targets that name
the head count are edited (a target computed at run time must say -1 there); a mask that differs
per head blocks.

Separate from the op-by-op channel walk (``rules.py``) because it is not one: three producers
meet in one core whose ops (Softmax, the ``Q·Kᵀ`` MatMul) block a channel walk, so the block is
recognised whole. ``discover.py`` merges its structures with the walk's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx

from onnxprune.graph.candidates import Candidate
from onnxprune.structures.graphview import (
    Blocked,
    GraphView,
    attr,
    concat_piece,
    reads_other_dims_only,
)
from onnxprune.structures.types import BlockedStructure, ConstantSlice, ShapeEdit, Structure

_SCORE_OPS = frozenset({"Mul", "Div", "Add", "Sub", "Where", "Cast"})
_SIDE_OPS = frozenset({"Transpose", "Reshape", "Add", "Mul", "Div"})


def find_heads(graph: GraphView, single: Mapping[str, Candidate],
               ) -> tuple[list[Structure], list[BlockedStructure]]:
    """Attention blocks whose heads can go: one structure per Softmax over attention scores."""
    found, blocked = [], []
    for node in graph.model.graph.node:
        if node.op_type != "Softmax":
            continue
        try:
            found.append(_match_attention(graph, node, single))
        except Blocked as exc:
            blocked.append(BlockedStructure(node.name, f"attention heads: {exc}"))
    return found, blocked


def _single_reader(graph: GraphView, tensor: str) -> onnx.NodeProto:
    readers = graph.consumers.get(tensor, [])
    if len(readers) != 1 or tensor in graph.outputs:
        raise Blocked(f"{tensor!r} is read by {len(readers)} nodes")
    return readers[0]


def _projection_reader(graph: GraphView, tensor: str) -> onnx.NodeProto:
    """The single reader of a head-side tensor, not counting ``Shape`` nodes that only read its
    leading dimensions."""
    rank = graph.rank(tensor)
    readers = [r for r in graph.consumers.get(tensor, [])
               if rank is None or not reads_other_dims_only(graph, r, rank, rank - 1)]
    if len(readers) != 1 or tensor in graph.outputs:
        raise Blocked(f"{tensor!r} is read by {len(readers)} nodes")
    return readers[0]


def _match_attention(graph: GraphView, softmax: onnx.NodeProto,
                     single: Mapping[str, Candidate]) -> Structure:
    shape = graph.shapes.get(softmax.input[0])
    if shape is None or len(shape) != 4:
        raise Blocked("the scores are not [batch, heads, queries, keys]")
    if int(attr(softmax, "axis", -1)) % 4 != 3:
        raise Blocked("Softmax is not over the keys")
    heads = shape[1]
    members: list[str] = [softmax.name]
    external: list[tuple[str, tuple[int, ...], int]] = []
    tensor = softmax.input[0]
    while True:  # back through scale, mask and casts to the QKᵀ MatMul
        node = graph.producer.get(tensor)
        if node is None:
            raise Blocked("the scores do not come from a MatMul")
        if node.op_type == "MatMul":
            qk = node
            break
        if node.op_type not in _SCORE_OPS:
            raise Blocked(f"{node.op_type} {node.name!r} between the scores and Softmax")
        members.append(node.name)
        variables = [i for i in node.input if i and graph.constant(i) is None]
        onward = [i for i in variables if graph.shapes.get(i) == shape]
        if not onward:
            raise Blocked(f"{node.op_type} {node.name!r} changes the scores' shape")
        tensor = onward[0]
        for other in variables:
            if other == tensor:
                continue
            other_shape = graph.shapes.get(other)
            if other_shape is None or (len(other_shape) == 4 and other_shape[1] != 1):
                raise Blocked(f"the mask {other!r} differs per head")
            external.append((other, tuple(other_shape), _elem_type(graph, other)))
    members.append(qk.name)
    side_q = _trace_side(graph, qk.input[0], heads, single, want_axis=1)
    side_k = _trace_side(graph, qk.input[1], heads, single, want_axis=1)
    pv = _single_reader(graph, softmax.output[0])
    if pv.op_type != "MatMul" or pv.input[0] != softmax.output[0]:
        raise Blocked(f"the probabilities feed {pv.op_type} {pv.name!r}, not P·V")
    side_v = _trace_side(graph, pv.input[1], heads, single, want_axis=1)
    members.append(pv.name)
    head_dim = side_q.head_dim
    if {side_k.head_dim, side_v.head_dim} != {head_dim}:
        raise Blocked("Q, K and V have different head sizes")
    activations = {single[s.producer].sites[0].activation for s in (side_q, side_k, side_v)}
    if len(activations) != 1:
        raise Blocked("Q, K and V read different inputs (cross-attention)")
    merge_members, consumer, edits, fixed = _merge_heads(graph, pv.output[0], heads, head_dim,
                                                         single)
    members += merge_members
    edits_all = [*side_q.edits, *side_k.edits, *side_v.edits, *edits]
    fixed_all = [*side_q.fixed, *side_k.fixed, *side_v.fixed, *fixed]
    members += [*side_q.members, *side_k.members, *side_v.members]
    producers = (side_q.producer, side_k.producer, side_v.producer)
    if len(set(producers)) != 3:
        raise Blocked("Q, K and V share a projection")
    ordered = tuple(sorted(set(members), key=lambda n: graph.position[n]))
    return Structure(
        name=f"heads {', '.join(producers)} -> {consumer}", kind="heads", producers=producers,
        consumer=consumer, members=ordered, width=heads, consumer_group=head_dim,
        slices=(*side_q.slices, *side_k.slices, *side_v.slices),
        reshapes=tuple(edits_all), producer_group=head_dim, external_inputs=tuple(external),
        fixed_shapes=tuple(fixed_all),
    )


def _elem_type(graph: GraphView, tensor: str) -> int:
    for value in [*graph.model.graph.value_info, *graph.model.graph.input,
                  *graph.model.graph.output]:
        if value.name == tensor and value.type.tensor_type.elem_type:
            return value.type.tensor_type.elem_type
    return onnx.TensorProto.FLOAT


@dataclass
class _Side:
    producer: str
    head_dim: int
    members: list[str]
    slices: list[ConstantSlice]
    edits: list[ShapeEdit]
    fixed: list[tuple[str, tuple[int, ...]]]


def _trace_side(graph: GraphView, tensor: str, heads: int, single: Mapping[str, Candidate],
                want_axis: int) -> _Side:
    """Back from a Q/K/V operand of the attention core to its projection (one head split)."""
    chain: list[onnx.NodeProto] = []
    while True:
        node = graph.producer.get(tensor)
        if node is None:
            raise Blocked(f"{tensor!r} does not come from a projection")
        if node.op_type in ("MatMul", "Gemm") and node.name in single:
            producer = node
            break
        if node.op_type not in _SIDE_OPS:
            raise Blocked(f"{node.op_type} {node.name!r} between a projection and the core")
        _projection_reader(graph, node.output[0])
        chain.append(node)
        variables = [i for i in node.input if i and graph.constant(i) is None]
        if node.op_type == "Reshape":
            variables = [node.input[0]]
        if len(variables) != 1:
            raise Blocked(f"{node.op_type} {node.name!r} joins two run-time tensors")
        tensor = variables[0]
    _single_reader(graph, producer.output[0])
    chain.reverse()  # projection -> core
    splits = [n for n in chain if n.op_type == "Reshape"]
    if len(splits) != 1:
        raise Blocked("no single Reshape splits the projection into heads")
    split = splits[0]
    out_shape = graph.shapes.get(split.output[0])
    in_shape = graph.shapes.get(split.input[0])
    if out_shape is None or in_shape is None or len(out_shape) != 4 or \
            out_shape[2] != heads or out_shape[3] * heads != in_shape[-1]:
        raise Blocked(f"Reshape {split.name!r} does not split the features into heads")
    head_dim = out_shape[3]
    side = _Side(producer.name, head_dim, [n.name for n in chain], [], [], [])
    axis = None
    for node in chain:
        rank = graph.rank(node.output[0]) or 0
        if node is split:
            axis = 2
            _shape_edit(graph, split, 2, heads, 1, side, out_shape)
        elif node.op_type == "Transpose":
            if axis is not None:
                perm = list(attr(node, "perm", list(range(rank - 1, -1, -1))))
                axis = perm.index(axis)
        elif graph.constant(node.input[1]) is not None or graph.constant(node.input[0]) is not None:
            index = 1 if graph.constant(node.input[1]) is not None else 0
            value = graph.constant(node.input[index])
            if axis is None:  # before the split: a bias over the features, per head group
                if value.size > 1:
                    if value.shape[-1] != heads * head_dim:
                        raise Blocked(f"{node.op_type} {node.name!r} has a constant of another "
                                      "width")
                    side.slices.append(ConstantSlice(node.name, index, value.ndim - 1,
                                                     head_dim))
            elif value.size > 1:
                raise Blocked(f"{node.op_type} {node.name!r} scales per element after the split")
    if axis != want_axis:
        raise Blocked("the heads are not on axis 1 at the attention core")
    return side


def _shape_edit(graph: GraphView, reshape: onnx.NodeProto, position: int, heads: int, group: int,
                side: _Side, out_shape: tuple[int, ...]) -> None:
    """Record how the Reshape target names the heads: fine if -1/0, edited if a constant."""
    fixed = list(out_shape)
    fixed[position] = -1
    target = graph.constant(reshape.input[1])
    if target is not None:
        entry = int(target.reshape(-1)[position])
        if entry == heads * group:
            side.edits.append(ShapeEdit(reshape.name, position, group))
        elif entry not in (-1, 0):
            raise Blocked(f"Reshape {reshape.name!r} target names another head count")
        return
    concat, index, in_piece, entry, known = concat_piece(graph, reshape, position, "head count")
    if entry == heads * group:
        side.edits.append(ShapeEdit(concat.name, in_piece, group, index, known))
    elif known is not None:
        raise Blocked(f"Reshape {reshape.name!r} takes the head count at run time")
    elif entry not in (-1, 0):
        raise Blocked(f"Reshape {reshape.name!r} target names another head count")
    side.fixed.append((reshape.name, tuple(fixed)))


def _merge_heads(graph: GraphView, tensor: str, heads: int, head_dim: int,
                 single: Mapping[str, Candidate]):
    """Forward from P·V ([b, heads, q, d]) through Transpose + Reshape to the output projection."""
    members: list[str] = []
    side = _Side("", head_dim, [], [], [], [])
    axis = 1
    while True:
        node = _single_reader(graph, tensor)
        if node.op_type == "Transpose":
            perm = list(attr(node, "perm", [3, 2, 1, 0]))
            axis = perm.index(axis)
        elif node.op_type == "Reshape":
            in_shape = graph.shapes.get(node.input[0])
            out_shape = graph.shapes.get(node.output[0])
            if in_shape is None or out_shape is None or axis != len(in_shape) - 2 or \
                    out_shape[-1] != heads * head_dim:
                raise Blocked(f"Reshape {node.name!r} does not merge the heads")
            members.append(node.name)
            _shape_edit(graph, node, len(out_shape) - 1, heads, head_dim, side, out_shape)
            consumer = _single_reader(graph, node.output[0])
            if consumer.op_type not in ("MatMul", "Gemm") or consumer.name not in single or \
                    consumer.input[0] != node.output[0]:
                raise Blocked("the merged heads do not feed a prunable projection")
            return members, consumer.name, side.edits, side.fixed
        else:
            raise Blocked(f"{node.op_type} {node.name!r} after P·V")
        members.append(node.name)
        tensor = node.output[0]
