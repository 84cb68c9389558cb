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

* **Concat and Split** along the channels move indices instead of tying them (YOLOv8's C2f:
  ``Split → bottleneck → Concat``; SPPF: ``Concat(x, pool(x), pool(pool(x)))``). Every tensor of
  the walk carries a *map*, the group index at each channel position: a Split hands each piece its
  run of the input's indices, a Concat's output carries its inputs' in turn, and an input of a
  Concat that the walk has not reached is followed back to its producer with new indices (a
  Split's other pieces too, when the walk arrives at one piece from below). The group's width is
  then the number of distinct indices; removing index *k* removes every position holding it
  (a consumer of ``Concat(y, y)`` loses two), and a Split's piece sizes shrink with it.

The walk ends when every tensor carrying the channels has been read to its consumers and every
coupler's operands and Concat's inputs are known. What blocks a group, with the reason: channels
that reach a graph output or come from a graph input (their values are the model's interface), a
normalization or reduction over the channel axis (LayerNorm over a pre-LN residual stream mixes
every channel), Slice and Gather, a Concat or Split along another axis or with run-time sizes, a
coupler whose operands hold the indices in different orders, an op followed backward that moves
the axis, and producers whose width differs from where they meet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import onnx

from onnxprune.graph.candidates import Candidate
from onnxprune.structures.graphview import Blocked, GraphView, attr
from onnxprune.structures.rules import (
    BINARY,
    POOLING,
    UNARY,
    Walk,
    join_concat,
    split_sizes,
    step,
)
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
        if (len(group.producers) == 1 and len(group.consumers) == 1 and not group.couplers
                and group.kind != "concat"):
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
        self.walk = Walk(width=0, maps={})
        self.producers: dict[str, Candidate] = {}
        self.couplers: set[str] = set()
        self.queue: deque[str] = deque()
        self.out_maps: dict[str, tuple[int, ...]] = {}
        self.add_producer(start, self.fresh(start.output_dim))

    @property
    def maps(self) -> dict[str, tuple[int, ...]]:
        assert self.walk.maps is not None
        return self.walk.maps

    def fresh(self, count: int) -> tuple[int, ...]:
        """``count`` new group indices: channels that join the group at a Concat or Split."""
        start = self.walk.width
        self.walk.width += count
        return tuple(range(start, start + count))

    def add_producer(self, producer: Candidate, indices: tuple[int, ...]) -> None:
        if producer.op == "Gemm" and producer.attrs.get("trans_a"):
            raise Blocked(f"Gemm {producer.name!r} with transA writes the channels")
        if producer.output_dim != len(indices):
            raise Blocked(f"{producer.name!r} writes {producer.output_dim} channels where "
                          f"{len(indices)} meet")
        out = self.graph.nodes[producer.name].output[0]
        rank = self.graph.rank(out)
        if rank is None:
            raise Blocked(f"the output shape of {producer.name!r} is unknown")
        axis = (1 if producer.op == "Conv" else rank - 1, 1)
        if self.walk.tensors.setdefault(out, axis) != axis:
            raise Blocked(f"{producer.name!r} writes the channels on another axis")
        if self.maps.setdefault(out, indices) != indices:
            raise Blocked(f"{producer.name!r} writes channels that meet in another order")
        self.producers[producer.name] = producer
        self.out_maps[producer.name] = indices
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

    def unjoined(self) -> list[tuple[str, onnx.NodeProto]]:
        """Inputs of Concats reached that the walk has not reached yet."""
        graph = self.graph
        return [(i, node) for node in self.walk.concats.values() for i in node.input
                if i and graph.constant(i) is None and i not in self.walk.tensors]

    def backward(self, tensor: str, carried: tuple[int, int], indices: tuple[int, ...],
                 like: str | None = None) -> None:
        """Follow ``tensor`` (an operand of a coupler whose output ``like`` carries the
        channels, or an input of a Concat) back to the producers that write it; it carries
        ``indices``."""
        graph = self.graph
        if like is not None and not _aligned(graph.shapes.get(tensor), graph.shapes.get(like),
                                             carried[0]):
            raise Blocked(f"{tensor!r} is broadcast into the channels of {like!r}")
        self.walk.tensors[tensor] = carried
        self.maps[tensor] = indices
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
                self.add_producer(self.single[node.name], self.maps[current])
                continue
            if node.name in self.candidates:
                raise Blocked(f"{node.name!r} writes the channels with a weight it shares")
            if node.op_type == "Split" and node.domain in ("", "ai.onnx"):
                stack.extend(self._back_split(node, current))
                continue
            if node.op_type == "Concat" and node.domain in ("", "ai.onnx"):
                stack.extend(self._back_concat(node, current))
                continue
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
                self.maps[tensor] = self.maps[output]
                self.queue.append(tensor)
                new.append(tensor)
            elif walk.tensors[tensor] != carried or self.maps[tensor] != self.maps[output]:
                raise Blocked(f"{node.op_type} {node.name!r} joins the channels on two axes")
        # the op's own rule records it (a member, its per-channel constants, a BatchNorm, a
        # depthwise conv) or says why it cannot carry them
        step(graph, walk, inputs[0], node, self.single, self.candidates)
        return new


    def _back_split(self, node: onnx.NodeProto, output: str) -> list[str]:
        """A Split's input, from one of its pieces: that piece's indices where it lies, new
        indices for the others (followed forward from the input)."""
        graph, walk = self.graph, self.walk
        carried = walk.tensors[output]
        source = node.input[0]
        shape = graph.shapes.get(source)
        axis = carried[0]
        if shape is None or carried[1] != 1 or int(attr(node, "axis", 0)) % len(shape) != axis:
            raise Blocked(f"Split {node.name!r} splits the channels along another axis")
        sizes = split_sizes(graph, node, shape[axis])
        indices: list[int] = []
        for piece, size in zip(node.output, sizes, strict=True):
            known = self.maps.get(piece)
            if known is not None and len(known) != size:
                raise Blocked(f"Split {node.name!r} meets channels of another width")
            indices.extend(known if known is not None else self.fresh(size))
        if source in walk.tensors:
            raise Blocked(f"Split {node.name!r} meets channels it does not carry")
        walk.tensors[source] = carried
        self.maps[source] = tuple(indices)
        self.queue.append(source)
        return [source]

    def _back_concat(self, node: onnx.NodeProto, output: str) -> list[str]:
        """A Concat's inputs, from its output: each carries its run of the output's indices."""
        graph, walk = self.graph, self.walk
        carried, indices = walk.tensors[output], self.maps[output]
        inputs = [i for i in node.input if i]
        shapes = [graph.shapes.get(i) for i in inputs]
        axis = carried[0]
        if (carried[1] != 1 or any(s is None for s in shapes)
                or sum(s[axis] for s in shapes) != len(indices)):
            raise Blocked(f"Concat {node.name!r} joins the channels along another axis")
        walk.members[node.name] = node
        new, start = [], 0
        for tensor, shape in zip(inputs, shapes, strict=True):
            piece = indices[start:start + shape[axis]]
            start += shape[axis]
            if tensor in walk.tensors:
                if walk.tensors[tensor] != carried or self.maps[tensor] != piece:
                    raise Blocked(f"Concat {node.name!r} meets channels it does not carry")
                continue
            walk.tensors[tensor], self.maps[tensor] = carried, piece
            self.queue.append(tensor)
            new.append(tensor)
        return new


def _close(graph: GraphView, start: Candidate, single: Mapping[str, Candidate],
           candidates: Mapping[str, Candidate]) -> ChannelGroup:
    """The group of ``start``'s output channels, closed in both directions."""
    state = _GroupWalk(graph, start, single, candidates)
    walk = state.walk
    while True:
        state.forward()
        unresolved, unjoined = state.unresolved(), state.unjoined()
        if not unresolved and not unjoined:
            break
        for tensor in unresolved:
            if tensor in walk.tensors:
                continue
            coupler = next(n for n in walk.pending.values() if tensor in n.input)
            state.couplers.add(coupler.name)
            out = coupler.output[0]
            state.backward(tensor, walk.tensors[out], state.maps[out], out)
        for tensor, concat in unjoined:
            if tensor in walk.tensors:
                continue
            known = next(i for i in concat.input if i in walk.tensors)
            carried, shape = walk.tensors[known], graph.shapes.get(tensor)
            if shape is None:
                raise Blocked(f"the shape of {tensor!r} (joined by {concat.name!r}) is unknown")
            state.couplers.add(concat.name)
            state.backward(tensor, carried, state.fresh(shape[carried[0]]))
        for concat in list(walk.concats.values()):
            state.queue.extend(join_concat(graph, walk, concat))
    for node in walk.pending.values():
        operands = {state.maps[i] for i in node.input if i and graph.constant(i) is None}
        if len(operands) > 1:
            raise Blocked(f"{node.op_type} {node.name!r} joins channels that Concat or Split "
                          "moved to other positions")
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
    moved = bool(walk.splits) or any(n.op_type == "Concat" for n in walk.members.values())
    kind = "concat" if moved else "residual" if len(producers) > 1 else "fan-out"
    name = f"group of {producers[0]} ({len(producers)} producers, {len(readers)} consumers)"
    whole = tuple(range(walk.width))
    maps = tuple((n, m) for n, m in sorted(walk.sites.items()) if m != whole)
    out_maps = tuple((n, m) for n, m in sorted(state.out_maps.items()) if m != whole)
    return ChannelGroup(
        name=name, kind=kind, producers=tuple(producers), consumers=tuple(readers),
        consumer_groups=tuple(consumers[c] for c in readers), couplers=couplers,
        members=tuple(sorted(walk.members, key=position.__getitem__)), width=walk.width,
        slices=tuple(walk.slices), depthwise=tuple(walk.depthwise),
        batchnorms=tuple(walk.batchnorms), reshapes=tuple(walk.reshapes),
        fixed_shapes=tuple(walk.fixed), maps=maps, out_maps=out_maps,
        splits=tuple(walk.splits),
    )
