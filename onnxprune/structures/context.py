"""Structures attached to the candidates the rest of the pipeline already handles.

A structure's options are the widths of its consumer candidate (``layouts/structure.py``), so the
latency table, the database, the allocator, the stitched model and the report treat it like any
other option. The consumer carries a :class:`StructureContext`: the structure, its producer and
its isolated subgraph (what the latency table times at each width). Producers and consumers get
no per-node layouts: a node pruned as part of a structure is not also block-pruned.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx

from onnxprune.graph.candidates import Candidate, GraphAnalysis
from onnxprune.structures.types import (
    BlockedStructure,
    ChannelGroup,
    Structure,
    StructureAnalysis,
)


@dataclass(frozen=True, eq=False)
class StructureContext:
    """What a consumer candidate needs to offer, time and materialize its structure.

    Attributes:
        structure: the structure.
        producers: its producer candidates (Q, K and V for attention heads).
        isolated: producer, members and consumer alone, dense (see ``shrink.isolated_structure``).
        signature: digest of the isolated subgraph's ops, attributes and shapes (no weight
            values), so identical blocks (six FFNs of an encoder) are timed once.
        companions: a coupled group's other consumers (the group is decided at its first
            consumer; they lose the same channels and take no option of their own).
    """

    structure: Structure | ChannelGroup
    producers: tuple[Candidate, ...]
    isolated: onnx.ModelProto
    signature: str
    companions: tuple[Candidate, ...] = ()

    @property
    def producer(self) -> Candidate:
        return self.producers[0]


def _signature(isolated: onnx.ModelProto) -> str:
    digest = hashlib.sha256()
    graph = isolated.graph
    for node in graph.node:
        digest.update(node.op_type.encode())
        for attr in node.attribute:
            digest.update(attr.SerializeToString())
    for tensor in graph.initializer:
        digest.update(str((list(tensor.dims), tensor.data_type)).encode())
    for value in [*graph.input, *graph.output]:
        digest.update(value.type.SerializeToString())
    return digest.hexdigest()[:24]


def attach_structures(
    model: onnx.ModelProto, candidates: Sequence[Candidate], found: StructureAnalysis,
) -> tuple[list[Candidate], set[str]]:
    """Candidates with each structure attached to its consumer (a group to its first consumer),
    and the names of the candidates that shrink with a structure decided elsewhere (producers,
    a group's other consumers)."""
    from onnxprune.structures.shrink import isolated_structure

    by_name = {c.name: c for c in candidates}
    contexts = {}
    producers: set[str] = set()
    for structure in (*found.structures, *found.groups):
        if any(n not in by_name for n in (*structure.producers, *structure.consumers)):
            continue  # an excluded node: the structure is not used
        isolated = isolated_structure(model, structure, by_name)
        decider, *others = structure.consumers
        contexts[decider] = StructureContext(
            structure, tuple(by_name[p] for p in structure.producers), isolated,
            _signature(isolated), tuple(by_name[c] for c in others))
        producers.update(structure.producers)
        producers.update(others)
    attached = [dataclasses.replace(c, structure=contexts[c.name]) if c.name in contexts else c
                for c in candidates]
    return attached, producers


def layouts_for(candidate: Candidate, layouts: Sequence[str], producers: set[str]) -> list[str]:
    """A structure's consumer takes its widths only, its producer nothing of its own; the other
    candidates take the per-node layouts (a node pruned as a structure is not also block-pruned).
    """
    if "structure" not in layouts:
        return list(layouts)
    if candidate.structure is not None:
        return ["structure"]
    if candidate.name in producers:
        return []
    return [name for name in layouts if name != "structure"]


def discover_and_attach(
    model: onnx.ModelProto, analysis: GraphAnalysis, candidates: Sequence[Candidate],
    keep: Callable[[Structure | ChannelGroup], bool] | None = None,
) -> tuple[GraphAnalysis, list[Candidate], set[str], StructureAnalysis]:
    """Find the channel structures, attach each to its consumer, in the analysis too.

    ``keep`` (per-node rules of a config file) can refuse a structure: it is then not attached
    and is reported among the blocked ones, with the reason.

    Returns:
        The analysis and the candidates with structures attached, the producers' names, and
        what discovery found (with the reason for every producer left without a structure).
    """
    from onnxprune.graph.shapes import infer_tensor_shapes
    from onnxprune.structures.discover import find_structures

    shapes = infer_tensor_shapes(model, analysis.bound,
                                 required=[o for n in model.graph.node for o in n.output if o])
    found = find_structures(model, analysis, shapes)
    if keep is not None:
        refused = [s for s in found.structures if not keep(s)]
        refused_groups = [g for g in found.groups if not keep(g)]
        found = dataclasses.replace(
            found, structures=tuple(s for s in found.structures if s not in refused),
            blocked=(*found.blocked, *(BlockedStructure(
                s.producer, f"{s.kind} structure to {s.consumer} refused by a per-node rule")
                for s in refused)),
            groups=tuple(g for g in found.groups if g not in refused_groups),
            groups_blocked=(*found.groups_blocked, *(BlockedStructure(
                g.producers[0], f"{g.name} refused by a per-node rule")
                for g in refused_groups)))
    attached, producers = attach_structures(model, candidates, found)
    by_name = {c.name: c for c in attached}
    analysis = dataclasses.replace(
        analysis, candidates=tuple(by_name.get(c.name, c) for c in analysis.candidates))
    return analysis, attached, producers, found
