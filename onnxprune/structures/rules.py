"""How each op carries a channel index from its input to its output: the op → mapping table.

Following a producer's channels (``discover.py``) asks one question of every node that reads them:
where do the channels go? Each op family answers in its own small function, and :data:`RULES`
maps op types to them (Torch-Pruning declares the same per op in ``dependency/``):

* **pass-through** ops carry the channel axis unchanged and shrink with it (:data:`UNARY`,
  BatchNormalization, depthwise Conv, pooling, Pad, Resize by scales, per-channel or scalar
  constants in Add/Sub/Mul/Div, binary ops whose operands both come from the same structure — the
  ``x·sigmoid(x)`` of SiLU, the ``x·(erf(x/√2)+1)`` of an exported GELU), Transpose and Squeeze /
  Unsqueeze move the axis, and Flatten / Reshape that merge the channel axis with the trailing
  dims turn a channel into a contiguous group of features (a CNN's flatten before its classifier);
* the **consumer** is the prunable MatMul/Gemm (rows) or group-1 Conv (input channels) that
  reads the channels: the walk ends there;
* **Concat and Split** along the channels move them to other positions: a group walk
  (``groups.py``, ``Walk.maps``) follows them with an index map per tensor; in a plain structure
  they block;
* anything else **blocks** the structure, with a reason: an op that mixes channels (Softmax,
  LayerNormalization or a reduction over the axis, Slice, Gather, a Reshape that splits the
  axis), an op no rule knows, or a rule that does not apply to how the node reads them.

A rule gets the reading node as a :class:`Read` and returns the tensors that now carry the
channels (``[]`` when none: a consumer, a second operand already seen), ``None`` when it does not
apply (the node then blocks as an unknown op), or raises :class:`Blocked` with the reason. The
state it records — members, per-channel constants, BatchNorms, shape edits — is the :class:`Walk`
that ``discover.py`` turns into a :class:`~onnxprune.structures.types.Structure`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.graph.candidates import Candidate
from onnxprune.structures.graphview import (
    Blocked,
    GraphView,
    attr,
    concat_piece,
    reads_other_dims_only,
)
from onnxprune.structures.types import ConstantSlice, ShapeEdit, SplitEdit

UNARY = frozenset({
    "Relu", "Clip", "Sigmoid", "Tanh", "Erf", "HardSwish", "HardSigmoid", "LeakyRelu", "Elu",
    "Selu", "Softplus", "Softsign", "Gelu", "Identity", "Neg", "Abs", "Mish", "PRelu", "Celu",
    "ThresholdedRelu", "Exp", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sin", "Cos",
    "Dropout",
})
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"})
POOLING = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"})
REDUCE = frozenset({"ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin"})
NORMALIZE = frozenset({"Softmax", "LogSoftmax", "LayerNormalization"})
BLOCKING = {
    "Concat": "concatenates the channels with other tensors",
    "Split": "splits the channels",
    "Slice": "slices the channels",
    "Gather": "gathers from the channels",
}
"""Ops that always block, with the reason (any op without a rule blocks too)."""


@dataclass
class Walk:
    """The state of following one producer's channels.

    ``pending`` holds binary ops whose other operand is a run-time tensor: when the walk ends, each
    must have every such operand carrying the same channels (else it is a residual or a coupling).
    """

    width: int
    members: dict[str, onnx.NodeProto] = field(default_factory=dict)
    tensors: dict[str, tuple[int, int]] = field(default_factory=dict)  # tensor -> (axis, group)
    consumers: list[tuple[onnx.NodeProto, int, int]] = field(default_factory=list)
    slices: list[ConstantSlice] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    batchnorms: list[str] = field(default_factory=list)
    reshapes: list[ShapeEdit] = field(default_factory=list)
    pending: dict[str, onnx.NodeProto] = field(default_factory=dict)
    fixed: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    maps: dict[str, tuple[int, ...]] | None = None
    """Group walks only (``groups.py``): tensor -> the group index at each channel position, so
    that Concat and Split can move channels; None in a plain walk, where they block."""
    sites: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Group walks: node -> the group indices of the channels it reads (what it cuts)."""
    splits: list[SplitEdit] = field(default_factory=list)
    concats: dict[str, onnx.NodeProto] = field(default_factory=dict)
    """Group walks: Concats reached whose other inputs are not known to carry channels yet."""

    def extent(self, tensor: str) -> int:
        """Channel positions of ``tensor`` (the walk's width unless Concat/Split moved them)."""
        if self.maps is not None and tensor in self.maps:
            return len(self.maps[tensor])
        return self.width

    def same_indices(self, a: str, b: str) -> bool:
        return self.maps is None or self.maps.get(a) == self.maps.get(b)

@dataclass(frozen=True)
class Read:
    """One node reading a tensor that carries the channels: what a rule is given.

    Attributes:
        graph: the model's lookups.
        walk: the walk so far (a rule records into it).
        node: the reading node.
        tensor: the tensor it reads.
        candidates: every prunable candidate, by name (a candidate reading the channels is the
            consumer).
        axis: the tensor's channel axis.
        group: consecutive entries per channel along that axis.
        rank: the tensor's rank, None when unknown.
    """

    graph: GraphView
    walk: Walk
    node: onnx.NodeProto
    tensor: str
    candidates: Mapping[str, Candidate]
    axis: int
    group: int
    rank: int | None

    @property
    def first(self) -> bool:
        """Whether the channels are the node's first input (its data, not a parameter)."""
        return self.node.input[0] == self.tensor

    def carry(self, axis: int | None = None) -> list[str]:
        """The node is a member; its first output carries the channels on ``axis`` (default:
        the same axis)."""
        return _carry(self.walk, self.node, self.node.output[0],
                      self.axis if axis is None else axis, self.group, self.tensor)


Rule = Callable[[Read], "list[str] | None"]


def step(graph: GraphView, walk: Walk, tensor: str, node: onnx.NodeProto,
         single: Mapping[str, Candidate], candidates: Mapping[str, Candidate]) -> list[str]:
    """Apply one reader of ``tensor``; returns the new tensors now carrying the channels."""
    axis, group = walk.tensors[tensor]
    if node.domain not in ("", "ai.onnx"):
        raise Blocked(f"custom op {node.domain}.{node.op_type} {node.name!r}")
    if node.name in walk.members:  # a binary op reached from its second structure operand
        return []
    rule = RULES.get(node.op_type)
    carried = None if rule is None else rule(
        Read(graph, walk, node, tensor, candidates, axis, group, graph.rank(tensor)))
    if carried is None:
        raise _declined(node)
    return carried


def _declined(node: onnx.NodeProto) -> Blocked:
    """Why a node that no rule carries the channels through blocks."""
    op, name = node.op_type, node.name
    if op in BLOCKING:
        return Blocked(f"{op} {name!r} {BLOCKING[op]}")
    return Blocked(f"{name!r}: op {op} is not known to carry channels")


# --------------------------------------------------------------------------- the consumer
def _consume(r: Read) -> list[str]:
    """A prunable candidate reads the channels as its input: the walk ends here."""
    op, node, axis, group, rank = r.node.op_type, r.node, r.axis, r.group, r.rank
    group_ok = (op == "Conv" and axis == 1 and group == 1
                and int(attr(node, "group", 1)) == 1) or (
        op != "Conv" and rank is not None and axis == rank - 1
        and not (op == "Gemm" and attr(node, "transA", 0)))
    if not group_ok:
        raise Blocked(f"{op} {node.name!r} reads the channels on another axis")
    r.walk.consumers.append((node, axis, group))
    _site(r.walk, node.name, r.tensor)
    return []


def _matmul(r: Read) -> list[str] | None:
    """MatMul / Gemm: the consumer when it is a candidate reading the channels as rows."""
    if r.first and r.node.name in r.candidates:
        return _consume(r)
    return None


def _conv(r: Read) -> list[str] | None:
    """Conv: the consumer when it is a candidate, else a depthwise member (one filter per
    channel: its weight, bias and ``group`` shrink)."""
    if not r.first:
        return None
    if r.node.name in r.candidates:
        return _consume(r)
    weight = r.graph.constant(r.node.input[1])
    conv_group = int(attr(r.node, "group", 1))
    width = r.walk.extent(r.tensor)
    if (weight is None or r.axis != 1 or r.group != 1 or conv_group != width
            or weight.shape[0] != width or weight.shape[1] != 1):
        raise Blocked(f"Conv {r.node.name!r} mixes channels and is not prunable")
    r.walk.depthwise.append(r.node.name)
    return r.carry()


# --------------------------------------------------------------------------- pass-through
def _unary(r: Read) -> list[str]:
    """Element-wise on one tensor: the channels pass (PRelu's slope is cut with them)."""
    if r.node.op_type == "PRelu":
        _per_channel(r.graph, r.walk, r.node, 1, r.tensor)
    return r.carry()


def _batchnorm(r: Read) -> list[str] | None:
    """BatchNormalization over the channel axis, with constant parameters (all four shrink)."""
    if not r.first:
        return None
    name = r.node.name
    if r.axis != 1 or r.group != 1:
        raise Blocked(f"BatchNormalization {name!r} normalizes another axis")
    if any(r.graph.constant(i) is None for i in r.node.input[1:5]):
        raise Blocked(f"BatchNormalization {name!r} has run-time parameters")
    r.walk.batchnorms.append(name)
    return r.carry()


def _binary(r: Read) -> list[str]:
    """A binary op with a per-channel or scalar constant, or whose other operand carries the
    same channels (checked when the walk ends: see ``Walk.pending``)."""
    graph, walk, node, tensor = r.graph, r.walk, r.node, r.tensor
    op, name = node.op_type, node.name
    others = [(i, other) for i, other in enumerate(node.input) if other != tensor and other]
    for index, other in others:
        if graph.constant(other) is not None:
            _per_channel(graph, walk, node, index, tensor)
        else:
            walk.pending[name] = node
            if other in walk.tensors and (walk.tensors[other] != (r.axis, r.group)
                                          or not walk.same_indices(other, tensor)):
                raise Blocked(f"{op} {name!r} joins the channels on different axes")
    if r.rank is not None and graph.rank(node.output[0]) != r.rank:
        raise Blocked(f"{op} {name!r} broadcasts the channels to another rank")
    return r.carry()


def _pooling(r: Read) -> list[str] | None:
    """Pooling over the spatial dims of NCHW channels."""
    if r.axis == 1 and r.group == 1 and r.first:
        return r.carry()
    return None


def _pad(r: Read) -> list[str] | None:
    """Pad with constant pads that leave the channel axis alone."""
    if not r.first:
        return None
    node, rank, axis = r.node, r.rank, r.axis
    pads = r.graph.constant(node.input[1]) if len(node.input) > 1 else attr(node, "pads")
    if pads is None or len(node.input) > 3 and node.input[3]:
        raise Blocked(f"Pad {node.name!r} with run-time pads or axes")
    pads = np.asarray(pads).reshape(-1)
    if rank is None or pads[axis] != 0 or pads[axis + rank] != 0:
        raise Blocked(f"Pad {node.name!r} pads the channel axis")
    return r.carry()


def _resize(r: Read) -> list[str] | None:
    """Resize by constant scales that are 1 along the channel axis."""
    if not r.first:
        return None
    node = r.node
    scales = r.graph.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sizes = len(node.input) > 3 and node.input[3]
    if sizes or scales is None or scales.size <= r.axis or scales.reshape(-1)[r.axis] != 1:
        raise Blocked(f"Resize {node.name!r} resizes by sizes or along the channel axis")
    return r.carry()


def _reduce(r: Read) -> list[str] | None:
    """A reduction over other axes: the channel axis moves down past the dropped ones."""
    if not r.first:
        return None
    node, axis, rank = r.node, r.axis, r.rank
    axes = _reduce_axes(r.graph, node)
    if axes is None or axis in axes or (rank is not None and axis - rank in axes):
        raise Blocked(f"{node.op_type} {node.name!r} reduces over the channel axis")
    keep = int(attr(node, "keepdims", 1))
    new_axis = axis if keep else axis - sum(1 for a in axes if a % (rank or 1) < axis)
    return r.carry(new_axis)


def _normalize(r: Read) -> list[str] | None:
    """Softmax / LogSoftmax / LayerNormalization over axes other than the channels."""
    if not r.first:
        return None
    node, op, axis, rank = r.node, r.node.op_type, r.axis, r.rank
    norm_axis = int(attr(node, "axis", -1))
    if rank is None or norm_axis % rank == axis or (
            op == "LayerNormalization" and axis >= norm_axis % rank):
        raise Blocked(f"{op} {node.name!r} normalizes over the channels (a residual stream "
                      "normalized after the Add, as in post-LN encoders, stays whole)")
    return r.carry()


# --------------------------------------------------------------------------- axis moves
def _transpose(r: Read) -> list[str]:
    """Transpose: the channel axis goes where ``perm`` puts it."""
    perm = list(attr(r.node, "perm", list(range((r.rank or 0) - 1, -1, -1))))
    return r.carry(perm.index(r.axis))


def _flatten_reshape(r: Read) -> list[str] | None:
    """Flatten / Reshape that keep each channel one contiguous run (see :func:`_reshape`)."""
    if not r.first:
        return None
    return _reshape(r.graph, r.walk, r.node, r.tensor, r.axis, r.group)


def _squeeze(r: Read) -> list[str] | None:
    """Squeeze / Unsqueeze: the channel axis is the output axis with the same extent and the
    same number of elements before it."""
    if not r.first:
        return None
    graph, node, tensor, axis = r.graph, r.node, r.tensor, r.axis
    op, name = node.op_type, node.name
    out_rank = graph.rank(node.output[0])
    in_shape, out_shape = graph.shapes.get(tensor), graph.shapes.get(node.output[0])
    if in_shape is None or out_shape is None or out_rank is None:
        raise Blocked(f"{op} {name!r} with unknown shapes")
    before = int(np.prod(in_shape[:axis]))
    mapped = [i for i in range(out_rank) if int(np.prod(out_shape[:i])) == before
              and out_shape[i] == in_shape[axis]]
    if not mapped:
        raise Blocked(f"{op} {name!r} moves the channel axis unpredictably")
    return r.carry(mapped[0])


# --------------------------------------------------------------------------- index moves
def _split(r: Read) -> list[str] | None:
    """Split along the channels (group walks only): each piece carries its run of indices, and
    its size shrinks with them (a :class:`SplitEdit`)."""
    walk, node = r.walk, r.node
    if walk.maps is None or not r.first:
        return None
    sizes = _split_sizes(r)
    indices = walk.maps[r.tensor]
    walk.members[node.name] = node
    new, start = [], 0
    pieces = []
    for out, size in zip(node.output, sizes, strict=True):
        piece = indices[start:start + size]
        start += size
        pieces.append(piece)
        if not out:
            raise Blocked(f"Split {node.name!r} drops a piece of the channels")
        if out in walk.tensors:
            if walk.tensors[out] != (r.axis, 1) or walk.maps.get(out) != piece:
                raise Blocked(f"Split {node.name!r} meets channels it does not carry")
            continue
        walk.tensors[out], walk.maps[out] = (r.axis, 1), piece
        new.append(out)
    if not any(edit.node == node.name for edit in walk.splits):
        walk.splits.append(SplitEdit(node.name, tuple(pieces)))
    return new


def _split_sizes(r: Read) -> list[int]:
    node, rank = r.node, r.rank
    if rank is None or int(attr(node, "axis", 0)) % rank != r.axis or r.group != 1:
        raise Blocked(f"Split {r.node.name!r} splits along another axis")
    return split_sizes(r.graph, node, r.walk.extent(r.tensor))


def split_sizes(graph: GraphView, node: onnx.NodeProto, extent: int) -> list[int]:
    """The piece sizes of a Split of ``extent`` channels: its ``split`` input (opset 13+) or
    attribute, else equal pieces."""
    if len(node.input) > 1 and node.input[1]:
        value = graph.constant(node.input[1])
        if value is None:
            raise Blocked(f"Split {node.name!r} has run-time piece sizes")
        sizes = [int(v) for v in value.reshape(-1)]
    elif attr(node, "split") is not None:
        sizes = [int(v) for v in attr(node, "split")]
    else:
        count = len(node.output)
        if extent % count:
            raise Blocked(f"Split {node.name!r} splits {extent} channels unevenly")
        sizes = [extent // count] * count
    if sum(sizes) != extent or len(sizes) != len(node.output):
        raise Blocked(f"Split {node.name!r} piece sizes do not add up to the channels")
    return sizes


def _concat(r: Read) -> list[str] | None:
    """Concat along the channels (group walks only): the output carries every input's indices
    in turn, once each input is known to carry some (``groups.py`` follows the others back)."""
    walk, node, rank = r.walk, r.node, r.rank
    if walk.maps is None:
        return None
    if rank is None or int(attr(node, "axis", 0)) % rank != r.axis or r.group != 1:
        raise Blocked(f"Concat {node.name!r} joins along another axis")
    walk.concats[node.name] = node
    return join_concat(r.graph, walk, node)


def join_concat(graph: GraphView, walk: Walk, node: onnx.NodeProto) -> list[str]:
    """The Concat's output, carrying its inputs' indices, when every input carries some."""
    assert walk.maps is not None
    if any(graph.constant(i) is not None for i in node.input if i):
        raise Blocked(f"Concat {node.name!r} joins the channels with constants")
    inputs = [i for i in node.input if i]
    if not all(i in walk.tensors for i in inputs):
        return []
    carried = {walk.tensors[i] for i in inputs}
    if len(carried) != 1:
        raise Blocked(f"Concat {node.name!r} joins channels carried on different axes")
    walk.concats.pop(node.name, None)
    walk.members[node.name] = node
    out, indices = node.output[0], tuple(j for i in inputs for j in walk.maps[i])
    if out in walk.tensors:
        if walk.maps.get(out) != indices:
            raise Blocked(f"Concat {node.name!r} meets channels it does not carry")
        return []
    walk.tensors[out], walk.maps[out] = next(iter(carried)), indices
    return [out]


def _shape(r: Read) -> list[str] | None:
    """A ``Shape`` that reads only other dims (the batch or length, which removing channels
    does not change) carries nothing."""
    if r.rank is not None and reads_other_dims_only(r.graph, r.node, r.rank, r.axis):
        return []
    return None


RULES: dict[str, Rule] = {
    "MatMul": _matmul, "Gemm": _matmul, "Conv": _conv,
    **dict.fromkeys(UNARY, _unary),
    "BatchNormalization": _batchnorm,
    **dict.fromkeys(BINARY, _binary),
    **dict.fromkeys(POOLING, _pooling),
    "Pad": _pad, "Resize": _resize,
    **dict.fromkeys(REDUCE, _reduce),
    **dict.fromkeys(NORMALIZE, _normalize),
    "Transpose": _transpose,
    "Flatten": _flatten_reshape, "Reshape": _flatten_reshape,
    "Squeeze": _squeeze, "Unsqueeze": _squeeze,
    "Shape": _shape,
    "Split": _split, "Concat": _concat,
}
"""The rule of each op that can carry channels (ops not here block: see :data:`BLOCKING`)."""


# --------------------------------------------------------------------------- shared helpers
def _carry(walk: Walk, node: onnx.NodeProto, out: str, axis: int, group: int,
           source: str) -> list[str]:
    walk.members[node.name] = node
    _site(walk, node.name, source)
    if out in walk.tensors:
        if not walk.same_indices(out, source):
            raise Blocked(f"{node.op_type} {node.name!r} meets channels it does not carry")
        return []
    walk.tensors[out] = (axis, group)
    if walk.maps is not None:
        walk.maps[out] = walk.maps[source]
    return [out]


def _site(walk: Walk, node: str, tensor: str) -> None:
    """Record which group indices ``node`` reads (group walks)."""
    if walk.maps is not None and tensor in walk.maps:
        walk.sites.setdefault(node, walk.maps[tensor])


def _per_channel(graph: GraphView, walk: Walk, node: onnx.NodeProto, index: int,
                 tensor: str) -> None:
    """Record a constant operand that is scalar along the channels, or one value per channel."""
    value = graph.constant(node.input[index])
    axis, group = walk.tensors[tensor]
    rank = graph.rank(tensor)
    if value is None or rank is None:
        raise Blocked(f"{node.op_type} {node.name!r} has a run-time operand")
    if value.ndim > rank:
        raise Blocked(f"{node.op_type} {node.name!r} broadcasts to a higher rank")
    const_axis = axis - (rank - value.ndim)
    if const_axis < 0 or value.shape[const_axis] == 1:
        return  # broadcast along the channels: nothing to cut
    if value.shape[const_axis] != walk.extent(tensor) * group:
        raise Blocked(f"{node.op_type} {node.name!r} has a constant of another width")
    walk.slices.append(ConstantSlice(node.name, index, const_axis, group))


def _reduce_axes(graph: GraphView, node: onnx.NodeProto) -> list[int] | None:
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = graph.constant(node.input[1])
        axes = None if value is None else value.reshape(-1).tolist()
    return None if axes is None else [int(a) for a in axes]


def _reshape(graph: GraphView, walk: Walk, node: onnx.NodeProto, tensor: str, axis: int,
             group: int) -> list[str]:
    """Flatten/Reshape that keep the channels as one contiguous run per channel."""
    in_shape, out_shape = graph.shapes.get(tensor), graph.shapes.get(node.output[0])
    if in_shape is None or out_shape is None:
        raise Blocked(f"{node.op_type} {node.name!r} with unknown shapes")
    before = int(np.prod(in_shape[:axis]))
    inner = group * int(np.prod(in_shape[axis + 1:]))  # contiguous elements per channel
    for position in range(len(out_shape)):
        if int(np.prod(out_shape[:position])) != before:
            continue
        trailing = int(np.prod(out_shape[position + 1:]))
        if inner % trailing or out_shape[position] != walk.extent(tensor) * (inner // trailing):
            continue
        new_group = inner // trailing
        if node.op_type == "Reshape":
            target = graph.constant(node.input[1])
            if target is None:  # built by a Concat (TorchScript's x.view(x.size(0), -1))
                concat, index, at, entry, known = concat_piece(graph, node, position)
                edit = ShapeEdit(concat.name, at, new_group, index, known)
                fixed = list(out_shape)
                fixed[position] = -1
                walk.fixed.append((node.name, tuple(fixed)))
            else:
                entry = int(target.reshape(-1)[position])
                edit = ShapeEdit(node.name, position, new_group)
            if entry not in (-1, 0, out_shape[position]):
                raise Blocked(f"Reshape {node.name!r} target does not match its output")
            if entry == out_shape[position]:
                walk.reshapes.append(edit)
                _site(walk, edit.node, tensor)
        elif int(attr(node, "axis", 1)) != position:
            continue
        return _carry(walk, node, node.output[0], position, new_group, tensor)
    raise Blocked(f"{node.op_type} {node.name!r} mixes the channel axis with others")
