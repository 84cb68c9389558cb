"""The value objects of channel structures: what discovery finds, and what every later stage reads.

A structure is plain data (Torch-Pruning's group: tensors, axes, indices), so the readers —
``structures/context.py`` attaching it to candidates, ``structures/shrink.py`` cutting it,
``layouts/structure.py`` offering its widths, ``report/inspect.py`` listing it — depend on this
module alone and not on how structures are found (``structures/discover.py``, ``rules.py``,
``heads.py``), which can change without touching them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


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


@dataclass(frozen=True)
class SplitEdit:
    """A ``Split`` along a group's channel axis: the size of each piece becomes the number of
    kept channels among the group indices it carries (``pieces``, one tuple per output)."""

    node: str
    pieces: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, eq=False)
class Structure:
    """Channels tied from one producer to one consumer (see :mod:`onnxprune.structures.discover`).

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

    @property
    def consumers(self) -> tuple[str, ...]:
        """The consumers (one; a :class:`ChannelGroup` has several), for code that cuts both."""
        return (self.consumer,)

    def group_of(self, consumer: str) -> int:
        """Consecutive rows of ``consumer``'s canonical weight per channel."""
        return self.consumer_group

    def map_of(self, node: str, *, output: bool = False) -> np.ndarray:
        """Every channel, in order, at every node (a :class:`ChannelGroup` can move them)."""
        return np.arange(self.width, dtype=np.int64)

    def positions(self, node: str, kept: np.ndarray, *, output: bool = False) -> np.ndarray:
        return np.asarray(kept, dtype=np.int64)

    @property
    def segments(self) -> np.ndarray:
        """One segment: a plain structure's channels are one run."""
        return np.zeros(self.width, dtype=np.int64)

    @property
    def splits(self) -> tuple[SplitEdit, ...]:
        return ()

    def keep_counts(self, keep: int) -> np.ndarray | None:
        return np.asarray([keep]) if 1 <= keep <= self.width else None

    def first_kept(self, keep: int) -> np.ndarray:
        return np.arange(keep, dtype=np.int64)

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "producers": list(self.producers),
                "consumer": self.consumer, "members": list(self.members), "width": self.width,
                "channel_size": self.consumer_group}


@dataclass(frozen=True, eq=False)
class ChannelGroup:
    """Channels tied across a coupler: several producers write them, several consumers read them
    (see :mod:`onnxprune.structures.groups`). DepGraph's group, on the ONNX graph.

    A residual Add (or Mul of two computed operands) makes every producer whose output meets there
    share the channel indices, and a tensor read by several prunable nodes makes them share the
    rows: removing channel *k* removes producer columns *k* of every producer, rows *k* of every
    consumer and entry *k* of every per-channel constant between them, at once.

    Attributes:
        name: a readable name, ``group of <first producer> (<n> producers, <m> consumers)``.
        kind: "residual" when a coupler ties several producers, else "fan-out" (one producer read
            by several consumers).
        producers: the producer candidates (their output channels go), in graph order.
        consumers: the consumer candidates (their input rows go), in graph order.
        consumer_groups: consecutive canonical rows per channel of each consumer (same order).
        couplers: the binary nodes with two computed operands that tie the producers, and the
            Concats that join channels.
        members, width, slices, depthwise, batchnorms, reshapes, fixed_shapes,
            external_inputs: as for :class:`Structure`.
        maps: where Concat and Split move the channels (YOLO's C2f: Split -> bottleneck ->
            Concat), the group index of each channel position a node reads (a consumer's
            inputs, a member's per-channel constants), by node; a node not listed reads every
            index in order. ``width`` then counts the distinct indices.
        out_maps: the same for the producers' outputs.
        splits: the Splits whose piece sizes shrink with the kept indices.
    """

    name: str
    kind: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    consumer_groups: tuple[int, ...]
    couplers: tuple[str, ...]
    members: tuple[str, ...]
    width: int
    slices: tuple[ConstantSlice, ...] = ()
    depthwise: tuple[str, ...] = ()
    batchnorms: tuple[str, ...] = ()
    reshapes: tuple[ShapeEdit, ...] = ()
    producer_group: int = 1
    fixed_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    external_inputs: tuple[tuple[str, tuple[int, ...], int], ...] = ()
    maps: tuple[tuple[str, tuple[int, ...]], ...] = ()
    out_maps: tuple[tuple[str, tuple[int, ...]], ...] = ()
    splits: tuple[SplitEdit, ...] = ()

    def map_of(self, node: str, *, output: bool = False) -> np.ndarray:
        """The group index of each channel position ``node`` reads (``output``: that a producer
        writes); every index in order where the channels reach it whole."""
        for name, indices in self.out_maps if output else self.maps:
            if name == node:
                return np.asarray(indices, dtype=np.int64)
        return np.arange(self.width, dtype=np.int64)

    def positions(self, node: str, kept: np.ndarray, *, output: bool = False) -> np.ndarray:
        """``node``'s channel positions that hold kept group indices, ascending."""
        return np.flatnonzero(np.isin(self.map_of(node, output=output),
                                      np.asarray(kept, dtype=np.int64)))

    @cached_property
    def segments(self) -> np.ndarray:
        """A segment id per group index: the finest runs that every producer's and Split piece's
        index range respects. Each segment keeps a share of a width (:meth:`keep_counts`), so no
        producer and no Split piece is ever emptied."""
        cuts = {0, self.width}
        ranges = [self.map_of(p, output=True) for p in self.producers]
        ranges += [np.asarray(piece) for edit in self.splits for piece in edit.pieces]
        for r in ranges:
            if len(r):
                cuts.update((int(r.min()), int(r.max()) + 1))
        return np.searchsorted(sorted(cuts), np.arange(self.width), side="right") - 1

    def keep_counts(self, keep: int) -> np.ndarray | None:
        """How many indices each segment keeps when the group keeps ``keep`` (largest
        remainders, at least one each); None when ``keep`` is below one per segment."""
        sizes = np.bincount(self.segments)
        if keep < len(sizes) or keep > self.width:
            return None
        share = sizes * (keep / self.width)
        counts = np.maximum(np.floor(share).astype(np.int64), 1)
        while counts.sum() > keep:
            counts[np.argmax(np.where(counts > 1, counts - share, -np.inf))] -= 1
        while counts.sum() < keep:
            counts[np.argmax(np.where(counts < sizes, share - counts, -np.inf))] += 1
        return counts

    def first_kept(self, keep: int) -> np.ndarray:
        """A kept set of size ``keep`` that respects :meth:`keep_counts` (for timing, where
        which channels go does not matter)."""
        counts = self.keep_counts(keep)
        if counts is None:
            raise ValueError(f"{self.name} cannot keep {keep} of {self.width} channels")
        segments = self.segments
        return np.concatenate([np.flatnonzero(segments == s)[:n] for s, n in enumerate(counts)])

    @property
    def producer(self) -> str:
        """The first producer in graph order."""
        return self.producers[0]

    @property
    def consumer(self) -> str:
        """The first consumer in graph order: the candidate the group is decided at."""
        return self.consumers[0]

    def group_of(self, consumer: str) -> int:
        return self.consumer_groups[self.consumers.index(consumer)]

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node that shrinks with the group (a node both producer and consumer once)."""
        return tuple(dict.fromkeys((*self.producers, *self.members, *self.consumers)))

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "producers": list(self.producers),
                "consumers": list(self.consumers), "couplers": list(self.couplers),
                "members": list(self.members), "width": self.width}


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
    groups: tuple[ChannelGroup, ...] = field(default=())
    """Coupled groups found: each decided at its first consumer (docs/structures.md)."""
    groups_blocked: tuple[BlockedStructure, ...] = field(default=())
    """Why the channels of producers outside every structure and group cannot form a group."""

    @property
    def found(self) -> tuple[Structure | ChannelGroup, ...]:
        """Every structure and group, as the report lists them."""
        return (*self.structures, *self.groups)

    @property
    def unstructured(self) -> tuple[BlockedStructure, ...]:
        """Why each producer in no structure and no group has none: its group's reason where it
        tried one, else its plain structure's."""
        inside = {p for s in self.found for p in s.producers}
        reasons = {b.producer: b for b in self.blocked}
        reasons.update((b.producer, b) for b in self.groups_blocked)
        return tuple(b for name, b in reasons.items() if name not in inside)

    def by_consumer(self) -> dict[str, Structure]:
        return {s.consumer: s for s in self.structures}

    def by_producer(self) -> dict[str, Structure]:
        return {s.producer: s for s in self.structures}
