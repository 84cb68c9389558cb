"""Finding coupled channel groups: channels that several producers write and several consumers read.

A plain structure (``discover.py``) has one producer and one consumer. Where channels meet at a
residual ``Add`` (or a ``Mul`` of two computed operands: a squeeze-excitation gate) every producer
whose output reaches the coupler writes the same channel indices, and where a tensor is read by
several prunable nodes they all read the same rows: removing channel *k* is possible only from all
of them at once. DepGraph (Torch-Pruning) closes such a group by walking the dependency graph in
both directions; this module does the same on the ONNX graph:

* **forward**, from every tensor carrying the channels, through every reader, with the op rules
  of :mod:`onnxprune.structures.rules` (the same ones a plain structure follows);
* **backward**, from every computed operand of a coupler that the walk has not reached, through
  the ops that keep the channel axis where it is (element-wise ops, BatchNormalization,
  depthwise Conv, pooling, Pad, Resize) to the prunable node that writes it — a new producer,
  whose output is then followed forward too.

The walk ends when every tensor carrying the channels has been read to its consumers and every
coupler's operands are known. What blocks a group, with the reason: channels that reach a graph
output or come from a graph input (their values are the model's interface), a normalization or
reduction over the channel axis (LayerNorm over a pre-LN residual stream mixes every channel),
Concat/Split/Slice (index offsets between groups: not followed yet), an op followed backward that
moves the axis, and producers of different widths.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import onnx

from onnxprune.graph.candidates import Candidate
from onnxprune.structures.graphview import Blocked, GraphView
from onnxprune.structures.rules import BINARY, POOLING, UNARY, Walk, step
from onnxprune.structures.types import BlockedStructure, ChannelGroup, Structure

BACKWARD = frozenset({*UNARY, *BINARY, *POOLING, "BatchNormalization", "Conv", "Pad",
                      "Resize"})
"""Ops followed from their output back to their input: each keeps the channel axis in place."""

_BROADCAST = frozenset({*UNARY, *BINARY, "BatchNormalization"})
"""Element-wise ops: an input lines up with the output when it broadcasts along other axes."""


def _aligned(shape: tuple[int, ...] | None, like: tuple[int, ...] | None, axis: int) -> bool:
    """Whether ``shape`` holds the channels of ``like`` on ``axis``: the same rank and channel
    count, every other dim equal or broadcast (a squeeze-excitation gate is [N, C, 1, 1])."""
    if shape is None or like is None or len(shape) != len(like) or shape[axis] != like[axis]:
        return False
    pairs = enumerate(zip(shape, like, strict=True))
    return all(a == b or a == 1 for i, (a, b) in pairs if i != axis)


def find_groups(
    graph: GraphView, single: Mapping[str, Candidate], candidates: Mapping[str, Candidate],
    plain: Sequence[Structure],
) -> tuple[list[ChannelGroup], list[BlockedStructure]]:
    """Every coupled group, and why the other producers tried have none.

    Args:
        graph: the model's lookups.
        single: the single-site candidates by name (the only ones a group can hold).
        candidates: every candidate by name.
        plain: the structures and heads already found. A node shrinks in one of them at most,
            and a weight's axis is cut by one of them at most: a structure's consumer may
            produce into a group (its rows and its columns are cut), not produce a second time.
    """
    producing = {p for s in plain for p in s.producers}
    consuming = {s.consumer for s in plain}
    shrinking = {m for s in plain for m in s.members}
    groups: list[ChannelGroup] = []
    blocked: list[BlockedStructure] = []
    for name in sorted(single, key=lambda n: graph.position[n]):
        if name in producing:
            continue
        try:
            group = _close(graph, single[name], single, candidates)
        except Blocked as exc:
            blocked.append(BlockedStructure(name, str(exc)))
            continue
        if len(group.producers) == 1 and len(group.consumers) == 1 and not group.couplers:
            continue  # a plain structure, left to discover.py (which said why it is not one)
        clash = sorted((producing & set(group.producers)) | (consuming & set(group.consumers))
                       | (shrinking & set(group.members)))
        if clash:
            blocked.append(BlockedStructure(name, f"its group shares {clash[0]} with another "
                                                  "structure"))
            continue
        producing.update(group.producers)
        consuming.update(group.consumers)
        shrinking.update(group.members)
        groups.append(group)
    return groups, blocked


class _GroupWalk:
    """The state of closing one group: the rules' :class:`Walk` plus its producers."""

    def __init__(self, graph: GraphView, start: Candidate, single: Mapping[str, Candidate],
                 candidates: Mapping[str, Candidate]) -> None:
        self.graph, self.single, self.candidates = graph, single, candidates
        self.walk = Walk(width=start.output_dim)
        self.producers: dict[str, Candidate] = {}
        self.couplers: set[str] = set()
        self.queue: deque[str] = deque()
        self.add_producer(start)

    def add_producer(self, producer: Candidate) -> None:
        if producer.op == "Gemm" and producer.attrs.get("trans_a"):
            raise Blocked(f"Gemm {producer.name!r} with transA writes the channels")
        if producer.output_dim != self.walk.width:
            raise Blocked(f"{producer.name!r} writes {producer.output_dim} channels into a "
                          f"group of {self.walk.width}")
        out = self.graph.nodes[producer.name].output[0]
        rank = self.graph.rank(out)
        if rank is None:
            raise Blocked(f"the output shape of {producer.name!r} is unknown")
        axis = (1 if producer.op == "Conv" else rank - 1, 1)
        if self.walk.tensors.setdefault(out, axis) != axis:
            raise Blocked(f"{producer.name!r} writes the channels on another axis")
        self.producers[producer.name] = producer
        self.queue.append(out)

    def forward(self) -> None:
        graph = self.graph
        while self.queue:
            tensor = self.queue.popleft()
            if tensor in graph.outputs:
                raise Blocked(f"the channels reach the graph output {tensor!r}")
            users = graph.consumers.get(tensor, [])
            if not users:
                raise Blocked(f"tensor {tensor!r} is never read")
            for user in users:
                self.queue.extend(step(graph, self.walk, tensor, user, self.single,
                                       self.candidates))

    def unresolved(self) -> list[str]:
        """Computed operands of couplers that the walk has not reached yet."""
        graph = self.graph
        return [i for node in self.walk.pending.values() for i in node.input
                if i and graph.constant(i) is None and i not in self.walk.tensors]

    def backward(self, tensor: str, carried: tuple[int, int], like: str) -> None:
        """Follow ``tensor`` (an operand of a coupler whose output ``like`` carries the
        channels) back to the producers that write it."""
        graph = self.graph
        if not _aligned(graph.shapes.get(tensor), graph.shapes.get(like), carried[0]):
            raise Blocked(f"{tensor!r} is broadcast into the channels of {like!r}")
        self.walk.tensors[tensor] = carried
        self.queue.append(tensor)
        stack = [tensor]
        while stack:
            current = stack.pop()
            node = graph.producer.get(current)
            if node is None:
                raise Blocked(f"the channels come from the graph input {current!r}")
            if node.name in self.producers or node.name in self.walk.members:
                continue
            if node.name in self.single and current == node.output[0]:
                self.add_producer(self.single[node.name])
                continue
            if node.name in self.candidates:
                raise Blocked(f"{node.name!r} writes the channels with a weight it shares")
            if node.domain not in ("", "ai.onnx") or node.op_type not in BACKWARD:
                raise Blocked(f"{node.op_type} {node.name!r} computes the channels in a way not "
                              "followed back (it is not element-wise along them)")
            stack.extend(self._through(node, current))

    def _through(self, node: onnx.NodeProto, output: str) -> list[str]:
        """``node``'s computed inputs, now carrying the channels of its ``output``."""
        graph, walk = self.graph, self.walk
        inputs = [i for i in node.input if i and graph.constant(i) is None]
        if node.op_type not in BINARY:
            inputs = inputs[:1]
        if not inputs:
            raise Blocked(f"{node.op_type} {node.name!r} computes the channels from constants")
        new = []
        out_shape, carried = graph.shapes.get(output), walk.tensors[output]
        for tensor in inputs:
            shape = graph.shapes.get(tensor)
            axis = carried[0]
            same = (_aligned(shape, out_shape, axis) if node.op_type in _BROADCAST else
                    shape is not None and out_shape is not None and len(shape) == len(out_shape)
                    and shape[axis] == out_shape[axis])
            if not same:
                raise Blocked(f"{node.op_type} {node.name!r} broadcasts into the channels")
            if tensor not in walk.tensors:
                walk.tensors[tensor] = carried
                self.queue.append(tensor)
                new.append(tensor)
            elif walk.tensors[tensor] != carried:
                raise Blocked(f"{node.op_type} {node.name!r} joins the channels on two axes")
        # the op's own rule records it (a member, its per-channel constants, a BatchNorm, a
        # depthwise conv) or says why it cannot carry them
        step(graph, walk, inputs[0], node, self.single, self.candidates)
        return new


def _close(graph: GraphView, start: Candidate, single: Mapping[str, Candidate],
           candidates: Mapping[str, Candidate]) -> ChannelGroup:
    """The group of ``start``'s output channels, closed in both directions."""
    state = _GroupWalk(graph, start, single, candidates)
    while True:
        state.forward()
        unresolved = state.unresolved()
        if not unresolved:
            break
        for tensor in unresolved:
            if tensor in state.walk.tensors:
                continue
            coupler = next(n for n in state.walk.pending.values() if tensor in n.input)
            state.couplers.add(coupler.name)
            state.backward(tensor, state.walk.tensors[coupler.output[0]], coupler.output[0])
    walk = state.walk
    consumers: dict[str, int] = {}
    for node, _, group in walk.consumers:
        if node.name not in single:
            raise Blocked(f"the consumer {node.name!r} is not a single-site prunable node")
        consumers.setdefault(node.name, group)
    if not consumers:
        raise Blocked("no MatMul/Gemm/Conv consumer reads the channels")
    position = graph.position
    producers = sorted(state.producers, key=position.__getitem__)
    readers = sorted(consumers, key=position.__getitem__)
    couplers = tuple(sorted(state.couplers, key=position.__getitem__))
    kind = "residual" if len(producers) > 1 else "fan-out"
    name = f"group of {producers[0]} ({len(producers)} producers, {len(readers)} consumers)"
    return ChannelGroup(
        name=name, kind=kind, producers=tuple(producers), consumers=tuple(readers),
        consumer_groups=tuple(consumers[c] for c in readers), couplers=couplers,
        members=tuple(sorted(walk.members, key=position.__getitem__)), width=walk.width,
        slices=tuple(walk.slices), depthwise=tuple(walk.depthwise),
        batchnorms=tuple(walk.batchnorms), reshapes=tuple(walk.reshapes),
        fixed_shapes=tuple(walk.fixed),
    )
