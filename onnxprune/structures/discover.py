"""Finding channel structures: channels tied from a producer, through the ops that carry them, to
a consumer, so that removing a channel shrinks every op on the way.

A per-node layout shrinks only its own node. A depthwise conv, a BatchNorm, a GELU or a ReLU6
shrink only when the channels feeding them go, and a removed output channel can be compensated
only in the node that reads it. So, DepGraph-style, each prunable MatMul/Gemm/Conv (the producer)
is followed along its output's channel axis:

* **pass-through** ops carry the channel axis unchanged and shrink with it (:data:`UNARY`,
  BatchNormalization, depthwise Conv, pooling, Pad, Resize by scales, per-channel or scalar
  constants in Add/Sub/Mul/Div, binary ops whose operands both come from the same structure — the
  ``x·sigmoid(x)`` of SiLU, the ``x·(erf(x/√2)+1)`` of an exported GELU), Transpose and Squeeze /
  Unsqueeze move the axis, and Flatten / Reshape that merge the channel axis with the trailing
  dims turn a channel into a contiguous group of features (a CNN's flatten before its classifier);
* the **consumer** is the prunable MatMul/Gemm (rows) or group-1 Conv (input channels) that
  reads the channels: its input columns go, and structured OBS on its input Hessian compensates;
* anything else **blocks** the structure, with a reason: a graph output, an op that mixes
  channels (Softmax, LayerNormalization or a reduction over the axis, Concat, Split, Gather, a
  Reshape that splits the axis), a residual Add with another tensor (the residual stream of a
  post-LN encoder and an MBConv's projection output stay whole), or a second consumer.

Every channel structure has exactly one producer and one consumer, each a single-site candidate.

**Attention heads** are matched as a pattern instead (:func:`find_heads`): from each Softmax over
``[batch, heads, queries, keys]`` scores back through the scale and mask to ``Q·Kᵀ``, from Q, K
and V through their Transposes, head-splitting Reshape and bias to their projections, and from
``P·V`` through the head-merging Transpose and Reshape to the output projection. A head is then
a channel of ``head_dim`` columns in Q, K, V and ``head_dim`` rows in the output projection;
removing it shrinks the attention core with it. Reshape targets that name the head count are
edited (a target computed at run time must say -1 there); a mask that differs per head blocks.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.graph.candidates import Candidate, GraphAnalysis

logger = logging.getLogger("onnxprune")

UNARY = frozenset({
    "Relu", "Clip", "Sigmoid", "Tanh", "Erf", "HardSwish", "HardSigmoid", "LeakyRelu", "Elu",
    "Selu", "Softplus", "Softsign", "Gelu", "Identity", "Neg", "Abs", "Mish", "PRelu", "Celu",
    "ThresholdedRelu", "Exp", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sin", "Cos",
    "Dropout",
})
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"})
POOLING = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"})


@dataclass(frozen=True)
class ConstantSlice:
    """A constant input of a member op that holds one value (or group) per channel.

    Attributes:
        node: the member node's name.
        input_index: which of its inputs holds the constant.
        axis: the constant's axis that runs over the channels.
        group: consecutive entries per channel along that axis.
    """

    node: str
    input_index: int
    axis: int
    group: int


@dataclass(frozen=True)
class ShapeEdit:
    """A constant shape entry that names the channel count: ``node.input[input_index]``'s element
    ``position`` becomes ``width · group`` (a Reshape target, or one piece of a Concat that
    builds it).

    ``known`` is the piece's value when it is computed at run time from a static dimension
    (TorchScript exports build ``[batch, seq, Shape(x)[2]]``): it is then replaced by a constant.
    """

    node: str
    position: int
    group: int
    input_index: int = 1
    known: tuple[int, ...] | None = None


@dataclass(frozen=True, eq=False)
class Structure:
    """Channels tied from one producer to one consumer (see the module docstring).

    Attributes:
        name: a readable name, ``<producer> -> <consumer>``.
        kind: "ffn" (MatMul/Gemm to MatMul/Gemm), "conv-chain" (Conv to Conv, through depthwise
            convs when there are some) or "channels" (any other pairing).
        producers: the producer candidates' names (their output channels go): one, or the Q, K
            and V projections of an attention block.
        consumer: the consumer candidate's name (its input channels go).
        members: the pass-through nodes between them, in graph order.
        width: the number of channels.
        consumer_group: consecutive rows of the consumer's canonical weight per channel
            (MatMul/Gemm: features per channel, 1 unless a flatten merged spatial dims in).
        slices: per-channel constants of members to cut with the channels.
        depthwise: depthwise Conv members (their weight, bias and ``group`` shrink).
        batchnorms: BatchNormalization members (their four parameters shrink).
        reshapes: constant shape entries that name the channel count.
        producer_group: consecutive output columns per channel in each producer (a head's
            ``head_dim``; 1 otherwise).
        external_inputs: (name, shape, elem type) of run-time tensors the structure reads besides
            the producers' activation (an attention mask), for its isolated subgraph.
        fixed_shapes: (Reshape node, concrete target with -1 at the channel axis) for Reshapes
            whose target is computed at run time, so the isolated subgraph runs at any width.
    """

    name: str
    kind: str
    producers: tuple[str, ...]
    consumer: str
    members: tuple[str, ...]
    width: int
    consumer_group: int = 1
    slices: tuple[ConstantSlice, ...] = ()
    depthwise: tuple[str, ...] = ()
    batchnorms: tuple[str, ...] = ()
    reshapes: tuple[ShapeEdit, ...] = ()
    producer_group: int = 1
    external_inputs: tuple[tuple[str, tuple[int, ...], int], ...] = ()
    fixed_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @property
    def producer(self) -> str:
        """The first producer (the only one, except for attention heads: Q, K and V)."""
        return self.producers[0]

    @property
    def nodes(self) -> tuple[str, ...]:
        return (*self.producers, *self.members, self.consumer)

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "producers": list(self.producers),
                "consumer": self.consumer, "members": list(self.members), "width": self.width,
                "channel_size": self.consumer_group}


@dataclass(frozen=True)
class BlockedStructure:
    """A producer whose output channels cannot form a structure, and why."""

    producer: str
    reason: str


@dataclass(frozen=True)
class StructureAnalysis:
    """Result of :func:`find_structures`."""

    structures: tuple[Structure, ...]
    blocked: tuple[BlockedStructure, ...] = field(default=())

    def by_consumer(self) -> dict[str, Structure]:
        return {s.consumer: s for s in self.structures}

    def by_producer(self) -> dict[str, Structure]:
        return {s.producer: s for s in self.structures}


class _Blocked(Exception):
    """Raised while following a structure: the reason it cannot be one."""


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


class _Graph:
    """Producers, consumers, constants and shapes of one model, looked up by tensor name."""

    def __init__(self, model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.model = model
        self.shapes = shapes
        self.nodes = {n.name: n for n in model.graph.node}
        self.position = {n.name: i for i, n in enumerate(model.graph.node)}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        for node in model.graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
            for name in node.output:
                self.producer[name] = node
        self.outputs = {o.name for o in model.graph.output}
        inputs = {i.name for i in model.graph.input}
        self.initializers = {t.name: t for t in model.graph.initializer if t.name not in inputs}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer or Constant node), else None."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            value = _attr(node, "value")
            if value is not None:
                return numpy_helper.to_array(value)
            for key in ("value_float", "value_floats", "value_int", "value_ints"):
                raw = _attr(node, key)
                if raw is not None:
                    return np.asarray(raw)
        return None

    def rank(self, tensor: str) -> int | None:
        shape = self.shapes.get(tensor)
        return None if shape is None else len(shape)


@dataclass
class _Walk:
    """The state of following one producer's channels."""

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


def find_structures(
    model: onnx.ModelProto, analysis: GraphAnalysis, shapes: Mapping[str, tuple[int, ...]],
) -> StructureAnalysis:
    """Every structure of ``model`` (one per eligible producer), and why other producers have none.

    Args:
        model: the model (unique node names, topologically sorted).
        analysis: its candidates at the deployment shapes.
        shapes: concrete tensor shapes at those shapes (``graph.shapes.infer_tensor_shapes``).
    """
    graph = _Graph(model, shapes)
    candidates = {c.name: c for c in analysis.candidates}
    single = {c.name: c for c in analysis.candidates if len(c.sites) == 1}
    found: list[Structure] = []
    blocked: list[BlockedStructure] = []
    taken: set[str] = set()
    for cand in sorted(analysis.candidates, key=lambda c: graph.position[c.sites[0].node]):
        if cand.name not in single:
            blocked.append(BlockedStructure(cand.name, "its weight is shared by several nodes"))
            continue
        try:
            structure = _follow(graph, cand, single, candidates)
        except _Blocked as exc:
            blocked.append(BlockedStructure(cand.name, str(exc)))
            continue
        overlap = taken.intersection(structure.members)
        if overlap:
            blocked.append(BlockedStructure(cand.name, f"shares {sorted(overlap)[0]} with "
                                                       "another structure"))
            continue
        taken.update(structure.members)
        found.append(structure)
    heads, heads_blocked = find_heads(graph, single)
    claimed = {n for s in found for n in (*s.producers, s.consumer)}
    for structure in heads:
        if claimed.intersection((*structure.producers, structure.consumer)) or \
                taken.intersection(structure.members):
            heads_blocked.append(BlockedStructure(structure.name, "overlaps another structure"))
            continue
        taken.update(structure.members)
        found.append(structure)
        blocked = [b for b in blocked if b.producer not in structure.producers]
    return StructureAnalysis(tuple(found), tuple(blocked) + tuple(heads_blocked))


def _follow(graph: _Graph, producer: Candidate, single: Mapping[str, Candidate],
            candidates: Mapping[str, Candidate]) -> Structure:
    node = graph.nodes[producer.name]
    if producer.op == "Gemm" and producer.attrs.get("trans_a"):
        raise _Blocked("Gemm with transA")
    out = node.output[0]
    rank = graph.rank(out)
    if rank is None:
        raise _Blocked("output shape unknown")
    axis = 1 if producer.op == "Conv" else rank - 1
    walk = _Walk(width=producer.output_dim)
    walk.tensors[out] = (axis, 1)
    queue: deque[str] = deque([out])
    while queue:
        tensor = queue.popleft()
        if tensor in graph.outputs:
            raise _Blocked(f"the channels reach the graph output {tensor!r}")
        users = graph.consumers.get(tensor, [])
        if not users:
            raise _Blocked(f"tensor {tensor!r} is never read")
        for user in users:
            for produced in _step(graph, walk, tensor, user, single, candidates):
                queue.append(produced)
    for name, node in walk.pending.items():
        variables = [i for i in node.input if i and graph.constant(i) is None]
        if not all(v in walk.tensors for v in variables):
            raise _Blocked(f"{node.op_type} {name!r} joins the channels with another tensor "
                           "(a residual or a coupling)")
    if len(walk.consumers) != 1:
        raise _Blocked(f"read by {len(walk.consumers)} consumers" if walk.consumers
                       else "no MatMul/Gemm/Conv consumer reads the channels")
    consumer_node, consumer_axis, group = walk.consumers[0]
    consumer = single.get(consumer_node.name)
    if consumer is None:
        raise _Blocked(f"the consumer {consumer_node.name!r} is not a single-site prunable node")
    kinds = {producer.op, consumer.op}
    kind = ("conv-chain" if kinds == {"Conv"} else
            "ffn" if kinds <= {"MatMul", "Gemm"} else "channels")
    members = tuple(sorted(walk.members, key=lambda n: graph.position[n]))
    return Structure(
        name=f"{producer.name} -> {consumer.name}", kind=kind, producers=(producer.name,),
        consumer=consumer.name, members=members, width=walk.width, consumer_group=group,
        slices=tuple(walk.slices), depthwise=tuple(walk.depthwise),
        batchnorms=tuple(walk.batchnorms), reshapes=tuple(walk.reshapes),
        fixed_shapes=tuple(walk.fixed),
    )


def _step(graph: _Graph, walk: _Walk, tensor: str, node: onnx.NodeProto,
          single: Mapping[str, Candidate], candidates: Mapping[str, Candidate]) -> list[str]:
    """Apply one reader of ``tensor``; returns the new tensors now carrying the channels."""
    axis, group = walk.tensors[tensor]
    op = node.op_type
    name = node.name
    if node.domain not in ("", "ai.onnx"):
        raise _Blocked(f"custom op {node.domain}.{op} {name!r}")
    if name in walk.members:  # a binary op reached from its second structure operand
        return []
    rank = graph.rank(tensor)
    if op in ("MatMul", "Gemm", "Conv") and node.input[0] == tensor and name in candidates:
        group_ok = (op == "Conv" and axis == 1 and group == 1
                    and int(_attr(node, "group", 1)) == 1) or (
            op != "Conv" and rank is not None and axis == rank - 1
            and not (op == "Gemm" and _attr(node, "transA", 0)))
        if not group_ok:
            raise _Blocked(f"{op} {name!r} reads the channels on another axis")
        walk.consumers.append((node, axis, group))
        return []
    if op == "Conv" and node.input[0] == tensor:
        weight = graph.constant(node.input[1])
        conv_group = int(_attr(node, "group", 1))
        if (weight is None or axis != 1 or group != 1 or conv_group != walk.width
                or weight.shape[0] != walk.width or weight.shape[1] != 1):
            raise _Blocked(f"Conv {name!r} mixes channels and is not prunable")
        walk.depthwise.append(name)
        return _carry(walk, node, node.output[0], axis, group)
    if op in UNARY:
        if op == "PRelu":
            _per_channel(graph, walk, node, 1, tensor)
        return _carry(walk, node, node.output[0], axis, group)
    if op == "BatchNormalization" and node.input[0] == tensor:
        if axis != 1 or group != 1:
            raise _Blocked(f"BatchNormalization {name!r} normalizes another axis")
        if any(graph.constant(i) is None for i in node.input[1:5]):
            raise _Blocked(f"BatchNormalization {name!r} has run-time parameters")
        walk.batchnorms.append(name)
        return _carry(walk, node, node.output[0], axis, group)
    if op in BINARY:
        others = [(i, other) for i, other in enumerate(node.input) if other != tensor and other]
        for index, other in others:
            if graph.constant(other) is not None:
                _per_channel(graph, walk, node, index, tensor)
            else:
                walk.pending[name] = node
                if other in walk.tensors and walk.tensors[other] != (axis, group):
                    raise _Blocked(f"{op} {name!r} joins the channels on different axes")
        if rank is not None and graph.rank(node.output[0]) != rank:
            raise _Blocked(f"{op} {name!r} broadcasts the channels to another rank")
        return _carry(walk, node, node.output[0], axis, group)
    if op in POOLING and axis == 1 and group == 1 and node.input[0] == tensor:
        return _carry(walk, node, node.output[0], axis, group)
    if op == "Pad" and node.input[0] == tensor:
        pads = graph.constant(node.input[1]) if len(node.input) > 1 else _attr(node, "pads")
        if pads is None or len(node.input) > 3 and node.input[3]:
            raise _Blocked(f"Pad {name!r} with run-time pads or axes")
        pads = np.asarray(pads).reshape(-1)
        if rank is None or pads[axis] != 0 or pads[axis + rank] != 0:
            raise _Blocked(f"Pad {name!r} pads the channel axis")
        return _carry(walk, node, node.output[0], axis, group)
    if op == "Resize" and node.input[0] == tensor:
        scales = graph.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        sizes = len(node.input) > 3 and node.input[3]
        if sizes or scales is None or scales.size <= axis or scales.reshape(-1)[axis] != 1:
            raise _Blocked(f"Resize {name!r} resizes by sizes or along the channel axis")
        return _carry(walk, node, node.output[0], axis, group)
    if op in ("ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin") and node.input[0] == tensor:
        axes = _reduce_axes(graph, node)
        if axes is None or axis in axes or (rank is not None and axis - rank in axes):
            raise _Blocked(f"{op} {name!r} reduces over the channel axis")
        keep = int(_attr(node, "keepdims", 1))
        new_axis = axis if keep else axis - sum(1 for a in axes if a % (rank or 1) < axis)
        return _carry(walk, node, node.output[0], new_axis, group)
    if op in ("Softmax", "LogSoftmax", "LayerNormalization") and node.input[0] == tensor:
        norm_axis = int(_attr(node, "axis", -1))
        if rank is None or norm_axis % rank == axis or (
                op == "LayerNormalization" and axis >= norm_axis % rank):
            raise _Blocked(f"{op} {name!r} normalizes over the channels (a residual stream "
                           "normalized after the Add, as in post-LN encoders, stays whole)")
        return _carry(walk, node, node.output[0], axis, group)
    if op == "Transpose":
        perm = list(_attr(node, "perm", list(range((rank or 0) - 1, -1, -1))))
        return _carry(walk, node, node.output[0], perm.index(axis), group)
    if op in ("Flatten", "Reshape") and node.input[0] == tensor:
        return _reshape(graph, walk, node, tensor, axis, group)
    if op in ("Squeeze", "Unsqueeze") and node.input[0] == tensor:
        out_rank = graph.rank(node.output[0])
        in_shape, out_shape = graph.shapes.get(tensor), graph.shapes.get(node.output[0])
        if in_shape is None or out_shape is None or out_rank is None:
            raise _Blocked(f"{op} {name!r} with unknown shapes")
        before = int(np.prod(in_shape[:axis]))
        mapped = [i for i in range(out_rank) if int(np.prod(out_shape[:i])) == before
                  and out_shape[i] == in_shape[axis]]
        if not mapped:
            raise _Blocked(f"{op} {name!r} moves the channel axis unpredictably")
        return _carry(walk, node, node.output[0], mapped[0], group)
    if op == "Shape" and rank is not None and _reads_other_dims_only(graph, node, rank, axis):
        return []  # reads the batch or length, which removing channels does not change
    reason = {
        "Concat": "concatenates the channels with other tensors",
        "Split": "splits the channels",
        "Slice": "slices the channels",
        "Gather": "gathers from the channels",
    }.get(op, f"op {op} is not known to carry channels")
    raise _Blocked(f"{op} {name!r} {reason}" if op in ("Concat", "Split", "Slice", "Gather")
                   else f"{name!r}: {reason}")


def _carry(walk: _Walk, node: onnx.NodeProto, out: str, axis: int, group: int) -> list[str]:
    walk.members[node.name] = node
    if out in walk.tensors:
        return []
    walk.tensors[out] = (axis, group)
    return [out]


def _per_channel(graph: _Graph, walk: _Walk, node: onnx.NodeProto, index: int,
                 tensor: str) -> None:
    """Record a constant operand that is scalar along the channels, or one value per channel."""
    value = graph.constant(node.input[index])
    axis, group = walk.tensors[tensor]
    rank = graph.rank(tensor)
    if value is None or rank is None:
        raise _Blocked(f"{node.op_type} {node.name!r} has a run-time operand")
    if value.ndim > rank:
        raise _Blocked(f"{node.op_type} {node.name!r} broadcasts to a higher rank")
    const_axis = axis - (rank - value.ndim)
    if const_axis < 0 or value.shape[const_axis] == 1:
        return  # broadcast along the channels: nothing to cut
    if value.shape[const_axis] != walk.width * group:
        raise _Blocked(f"{node.op_type} {node.name!r} has a constant of another width")
    walk.slices.append(ConstantSlice(node.name, index, const_axis, group))


def _reduce_axes(graph: _Graph, node: onnx.NodeProto) -> list[int] | None:
    axes = _attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = graph.constant(node.input[1])
        axes = None if value is None else value.reshape(-1).tolist()
    return None if axes is None else [int(a) for a in axes]


def _reshape(graph: _Graph, walk: _Walk, node: onnx.NodeProto, tensor: str, axis: int,
             group: int) -> list[str]:
    """Flatten/Reshape that keep the channels as one contiguous run per channel."""
    in_shape, out_shape = graph.shapes.get(tensor), graph.shapes.get(node.output[0])
    if in_shape is None or out_shape is None:
        raise _Blocked(f"{node.op_type} {node.name!r} with unknown shapes")
    before = int(np.prod(in_shape[:axis]))
    inner = group * int(np.prod(in_shape[axis + 1:]))  # contiguous elements per channel
    for position in range(len(out_shape)):
        if int(np.prod(out_shape[:position])) != before:
            continue
        trailing = int(np.prod(out_shape[position + 1:]))
        if inner % trailing or out_shape[position] != walk.width * (inner // trailing):
            continue
        new_group = inner // trailing
        if node.op_type == "Reshape":
            target = graph.constant(node.input[1])
            if target is None:  # built by a Concat (TorchScript's x.view(x.size(0), -1))
                concat, index, at, entry, known = _concat_piece(graph, node, position)
                edit = ShapeEdit(concat.name, at, new_group, index, known)
                fixed = list(out_shape)
                fixed[position] = -1
                walk.fixed.append((node.name, tuple(fixed)))
            else:
                entry = int(target.reshape(-1)[position])
                edit = ShapeEdit(node.name, position, new_group)
            if entry not in (-1, 0, out_shape[position]):
                raise _Blocked(f"Reshape {node.name!r} target does not match its output")
            if entry == out_shape[position]:
                walk.reshapes.append(edit)
        elif int(_attr(node, "axis", 1)) != position:
            continue
        return _carry(walk, node, node.output[0], position, new_group)
    raise _Blocked(f"{node.op_type} {node.name!r} mixes the channel axis with others")


def structure_candidates(
    analysis: GraphAnalysis, structures: StructureAnalysis,
) -> dict[str, Candidate]:
    """The consumer candidate of every structure, by structure name."""
    by_name = {c.name: c for c in analysis.candidates}
    return {s.name: by_name[s.consumer] for s in structures.structures}


def describe_blocked(blocked: Sequence[BlockedStructure]) -> list[str]:
    return [f"{b.producer}: {b.reason}" for b in blocked]


# --------------------------------------------------------------------------- attention heads
_SCORE_OPS = frozenset({"Mul", "Div", "Add", "Sub", "Where", "Cast"})
_SIDE_OPS = frozenset({"Transpose", "Reshape", "Add", "Mul", "Div"})


def find_heads(graph: _Graph, single: Mapping[str, Candidate],
               ) -> tuple[list[Structure], list[BlockedStructure]]:
    """Attention blocks whose heads can go: one structure per Softmax over attention scores."""
    found, blocked = [], []
    for node in graph.model.graph.node:
        if node.op_type != "Softmax":
            continue
        try:
            found.append(_match_attention(graph, node, single))
        except _Blocked as exc:
            blocked.append(BlockedStructure(node.name, f"attention heads: {exc}"))
    return found, blocked


def _single_reader(graph: _Graph, tensor: str) -> onnx.NodeProto:
    readers = graph.consumers.get(tensor, [])
    if len(readers) != 1 or tensor in graph.outputs:
        raise _Blocked(f"{tensor!r} is read by {len(readers)} nodes")
    return readers[0]


def _reads_other_dims_only(graph: _Graph, node: onnx.NodeProto, rank: int, axis: int) -> bool:
    """A ``Shape`` whose every use picks a dimension other than the channel ``axis`` with a
    constant ``Gather`` (TorchScript exports read batch and length this way): removing channels
    does not change what it computes."""
    if node.op_type != "Shape" or _attr(node, "start") is not None or \
            _attr(node, "end") is not None or node.output[0] in graph.outputs:
        return False
    for use in graph.consumers.get(node.output[0], []):
        index = graph.constant(use.input[1]) if use.op_type == "Gather" else None
        if index is None or index.size != 1 or int(index.reshape(-1)[0]) % rank == axis:
            return False
    return True


def _projection_reader(graph: _Graph, tensor: str) -> onnx.NodeProto:
    """The single reader of a head-side tensor, not counting ``Shape`` nodes that only read its
    leading dimensions."""
    rank = graph.rank(tensor)
    readers = [r for r in graph.consumers.get(tensor, [])
               if rank is None or not _reads_other_dims_only(graph, r, rank, rank - 1)]
    if len(readers) != 1 or tensor in graph.outputs:
        raise _Blocked(f"{tensor!r} is read by {len(readers)} nodes")
    return readers[0]


def _concat_piece(graph: _Graph, reshape: onnx.NodeProto, position: int,
                  what: str = "channel count",
                  ) -> tuple[onnx.NodeProto, int, int, int, tuple[int, ...] | None]:
    """Where entry ``position`` of a Reshape target built by a Concat comes from.

    Returns:
        (the Concat, its input index, the position in that piece, the entry's value, the piece's
        value when it is computed at run time from a static dimension, else None).
    """
    concat = graph.producer.get(reshape.input[1])
    if concat is None or concat.op_type != "Concat":
        raise _Blocked(f"Reshape {reshape.name!r} target is computed in an unknown way")
    offset = 0
    for index, piece in enumerate(concat.input):
        piece_shape = graph.shapes.get(piece)
        length = int(piece_shape[0]) if piece_shape else 1
        if offset <= position < offset + length:
            value, known = graph.constant(piece), None
            if value is None:
                value = _static_piece(graph, piece)
                known = None if value is None else tuple(int(v) for v in value.reshape(-1))
            if value is None:
                raise _Blocked(f"Reshape {reshape.name!r} takes the {what} at run time")
            return concat, index, position - offset, int(value.reshape(-1)[position - offset]), \
                known
        offset += length
    raise _Blocked(f"Reshape {reshape.name!r} target is shorter than its output")


def _static_piece(graph: _Graph, piece: str) -> np.ndarray | None:
    """The value of a run-time shape piece ``Unsqueeze(Gather(Shape(t), i))`` when ``t``'s
    dimension ``i`` is static (None otherwise)."""
    unsqueeze = graph.producer.get(piece)
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze":
        return None
    gather = graph.producer.get(unsqueeze.input[0])
    if gather is None or gather.op_type != "Gather":
        return None
    index = graph.constant(gather.input[1])
    shape_node = graph.producer.get(gather.input[0])
    if index is None or index.size != 1 or shape_node is None or \
            shape_node.op_type != "Shape" or _attr(shape_node, "start") is not None:
        return None
    dims = graph.shapes.get(shape_node.input[0])
    if dims is None:
        return None
    dim = dims[int(index.reshape(-1)[0]) % len(dims)]
    return np.array([dim], np.int64) if isinstance(dim, (int, np.integer)) else None


def _match_attention(graph: _Graph, softmax: onnx.NodeProto,
                     single: Mapping[str, Candidate]) -> Structure:
    shape = graph.shapes.get(softmax.input[0])
    if shape is None or len(shape) != 4:
        raise _Blocked("the scores are not [batch, heads, queries, keys]")
    if int(_attr(softmax, "axis", -1)) % 4 != 3:
        raise _Blocked("Softmax is not over the keys")
    heads = shape[1]
    members: list[str] = [softmax.name]
    external: list[tuple[str, tuple[int, ...], int]] = []
    tensor = softmax.input[0]
    while True:  # back through scale, mask and casts to the QKᵀ MatMul
        node = graph.producer.get(tensor)
        if node is None:
            raise _Blocked("the scores do not come from a MatMul")
        if node.op_type == "MatMul":
            qk = node
            break
        if node.op_type not in _SCORE_OPS:
            raise _Blocked(f"{node.op_type} {node.name!r} between the scores and Softmax")
        members.append(node.name)
        variables = [i for i in node.input if i and graph.constant(i) is None]
        onward = [i for i in variables if graph.shapes.get(i) == shape]
        if not onward:
            raise _Blocked(f"{node.op_type} {node.name!r} changes the scores' shape")
        tensor = onward[0]
        for other in variables:
            if other == tensor:
                continue
            other_shape = graph.shapes.get(other)
            if other_shape is None or (len(other_shape) == 4 and other_shape[1] != 1):
                raise _Blocked(f"the mask {other!r} differs per head")
            external.append((other, tuple(other_shape), _elem_type(graph, other)))
    members.append(qk.name)
    side_q = _trace_side(graph, qk.input[0], heads, single, want_axis=1)
    side_k = _trace_side(graph, qk.input[1], heads, single, want_axis=1)
    pv = _single_reader(graph, softmax.output[0])
    if pv.op_type != "MatMul" or pv.input[0] != softmax.output[0]:
        raise _Blocked(f"the probabilities feed {pv.op_type} {pv.name!r}, not P·V")
    side_v = _trace_side(graph, pv.input[1], heads, single, want_axis=1)
    members.append(pv.name)
    head_dim = side_q.head_dim
    if {side_k.head_dim, side_v.head_dim} != {head_dim}:
        raise _Blocked("Q, K and V have different head sizes")
    activations = {single[s.producer].sites[0].activation for s in (side_q, side_k, side_v)}
    if len(activations) != 1:
        raise _Blocked("Q, K and V read different inputs (cross-attention)")
    merge_members, consumer, edits, fixed = _merge_heads(graph, pv.output[0], heads, head_dim,
                                                         single)
    members += merge_members
    edits_all = [*side_q.edits, *side_k.edits, *side_v.edits, *edits]
    fixed_all = [*side_q.fixed, *side_k.fixed, *side_v.fixed, *fixed]
    members += [*side_q.members, *side_k.members, *side_v.members]
    producers = (side_q.producer, side_k.producer, side_v.producer)
    if len(set(producers)) != 3:
        raise _Blocked("Q, K and V share a projection")
    ordered = tuple(sorted(set(members), key=lambda n: graph.position[n]))
    return Structure(
        name=f"heads {', '.join(producers)} -> {consumer}", kind="heads", producers=producers,
        consumer=consumer, members=ordered, width=heads, consumer_group=head_dim,
        slices=(*side_q.slices, *side_k.slices, *side_v.slices),
        reshapes=tuple(edits_all), producer_group=head_dim, external_inputs=tuple(external),
        fixed_shapes=tuple(fixed_all),
    )


def _elem_type(graph: _Graph, tensor: str) -> int:
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


def _trace_side(graph: _Graph, tensor: str, heads: int, single: Mapping[str, Candidate],
                want_axis: int) -> _Side:
    """Back from a Q/K/V operand of the attention core to its projection (one head split)."""
    chain: list[onnx.NodeProto] = []
    while True:
        node = graph.producer.get(tensor)
        if node is None:
            raise _Blocked(f"{tensor!r} does not come from a projection")
        if node.op_type in ("MatMul", "Gemm") and node.name in single:
            producer = node
            break
        if node.op_type not in _SIDE_OPS:
            raise _Blocked(f"{node.op_type} {node.name!r} between a projection and the core")
        _projection_reader(graph, node.output[0])
        chain.append(node)
        variables = [i for i in node.input if i and graph.constant(i) is None]
        if node.op_type == "Reshape":
            variables = [node.input[0]]
        if len(variables) != 1:
            raise _Blocked(f"{node.op_type} {node.name!r} joins two run-time tensors")
        tensor = variables[0]
    _single_reader(graph, producer.output[0])
    chain.reverse()  # projection -> core
    splits = [n for n in chain if n.op_type == "Reshape"]
    if len(splits) != 1:
        raise _Blocked("no single Reshape splits the projection into heads")
    split = splits[0]
    out_shape = graph.shapes.get(split.output[0])
    in_shape = graph.shapes.get(split.input[0])
    if out_shape is None or in_shape is None or len(out_shape) != 4 or \
            out_shape[2] != heads or out_shape[3] * heads != in_shape[-1]:
        raise _Blocked(f"Reshape {split.name!r} does not split the features into heads")
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
                perm = list(_attr(node, "perm", list(range(rank - 1, -1, -1))))
                axis = perm.index(axis)
        elif graph.constant(node.input[1]) is not None or graph.constant(node.input[0]) is not None:
            index = 1 if graph.constant(node.input[1]) is not None else 0
            value = graph.constant(node.input[index])
            if axis is None:  # before the split: a bias over the features, per head group
                if value.size > 1:
                    if value.shape[-1] != heads * head_dim:
                        raise _Blocked(f"{node.op_type} {node.name!r} has a constant of another "
                                       "width")
                    side.slices.append(ConstantSlice(node.name, index, value.ndim - 1,
                                                     head_dim))
            elif value.size > 1:
                raise _Blocked(f"{node.op_type} {node.name!r} scales per element after the split")
    if axis != want_axis:
        raise _Blocked("the heads are not on axis 1 at the attention core")
    return side


def _shape_edit(graph: _Graph, reshape: onnx.NodeProto, position: int, heads: int, group: int,
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
            raise _Blocked(f"Reshape {reshape.name!r} target names another head count")
        return
    concat, index, in_piece, entry, known = _concat_piece(graph, reshape, position, "head count")
    if entry == heads * group:
        side.edits.append(ShapeEdit(concat.name, in_piece, group, index, known))
    elif known is not None:
        raise _Blocked(f"Reshape {reshape.name!r} takes the head count at run time")
    elif entry not in (-1, 0):
        raise _Blocked(f"Reshape {reshape.name!r} target names another head count")
    side.fixed.append((reshape.name, tuple(fixed)))


def _merge_heads(graph: _Graph, tensor: str, heads: int, head_dim: int,
                 single: Mapping[str, Candidate]):
    """Forward from P·V ([b, heads, q, d]) through Transpose + Reshape to the output projection."""
    members: list[str] = []
    side = _Side("", head_dim, [], [], [], [])
    axis = 1
    while True:
        node = _single_reader(graph, tensor)
        if node.op_type == "Transpose":
            perm = list(_attr(node, "perm", [3, 2, 1, 0]))
            axis = perm.index(axis)
        elif node.op_type == "Reshape":
            in_shape = graph.shapes.get(node.input[0])
            out_shape = graph.shapes.get(node.output[0])
            if in_shape is None or out_shape is None or axis != len(in_shape) - 2 or \
                    out_shape[-1] != heads * head_dim:
                raise _Blocked(f"Reshape {node.name!r} does not merge the heads")
            members.append(node.name)
            _shape_edit(graph, node, len(out_shape) - 1, heads, head_dim, side, out_shape)
            consumer = _single_reader(graph, node.output[0])
            if consumer.op_type not in ("MatMul", "Gemm") or consumer.name not in single or \
                    consumer.input[0] != node.output[0]:
                raise _Blocked("the merged heads do not feed a prunable projection")
            return members, consumer.name, side.edits, side.fixed
        else:
            raise _Blocked(f"{node.op_type} {node.name!r} after P·V")
        members.append(node.name)
        tensor = node.output[0]
