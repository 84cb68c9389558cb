"""Finding channel structures: channels tied from a producer, through the ops that carry them, to
a consumer, so that removing a channel shrinks every op on the way.

A per-node layout shrinks only its own node. A depthwise conv, a BatchNorm, a GELU or a ReLU6
shrink only when the channels feeding them go, and a removed output channel can be compensated
only in the node that reads it. So, DepGraph-style, each prunable MatMul/Gemm/Conv (the producer)
is followed along its output's channel axis, one reader at a time, by the op → channel mapping
of :mod:`onnxprune.structures.rules`: **pass-through** ops carry the channel axis (and shrink with
it), the **consumer** — the prunable MatMul/Gemm (rows) or group-1 Conv (input channels) that
reads the channels — ends the walk (its input columns go, and structured OBS on its input Hessian
compensates), and anything else **blocks** the structure, with a reason.

Every channel structure has exactly one producer and one consumer, each a single-site candidate.
**Attention heads** are matched as a pattern instead (:mod:`onnxprune.structures.heads`), and
merged here with the channel structures: a node belongs to one structure at most. Channels
tied across residual Adds or read by several consumers form **groups**
(:mod:`onnxprune.structures.groups`), closed last, around the structures.

This module is the assembly only: which producers to follow, the walk's queue, the checks once a
walk ends (joins, one consumer) and the merge. The per-op rules, the head pattern and the value
objects (:mod:`onnxprune.structures.types`) live apart, so each can be read and tested alone.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence

import onnx

from onnxprune.graph.candidates import Candidate, GraphAnalysis
from onnxprune.structures.graphview import Blocked, GraphView
from onnxprune.structures.groups import find_groups
from onnxprune.structures.heads import find_heads
from onnxprune.structures.rules import Walk, step
from onnxprune.structures.types import BlockedStructure, Structure, StructureAnalysis

logger = logging.getLogger("onnxprune")


def find_structures(
    model: onnx.ModelProto, analysis: GraphAnalysis, shapes: Mapping[str, tuple[int, ...]],
) -> StructureAnalysis:
    """Every structure of ``model`` (one per eligible producer), and why other producers have none.

    Args:
        model: the model (unique node names, topologically sorted).
        analysis: its candidates at the deployment shapes.
        shapes: concrete tensor shapes at those shapes (``graph.shapes.infer_tensor_shapes``).
    """
    graph = GraphView(model, shapes)
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
        except Blocked as exc:
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
    groups, groups_blocked = find_groups(graph, single, candidates, found)
    return StructureAnalysis(tuple(found), tuple(blocked) + tuple(heads_blocked), tuple(groups),
                             tuple(groups_blocked))


def _follow(graph: GraphView, producer: Candidate, single: Mapping[str, Candidate],
            candidates: Mapping[str, Candidate]) -> Structure:
    node = graph.nodes[producer.name]
    if producer.op == "Gemm" and producer.attrs.get("trans_a"):
        raise Blocked("Gemm with transA")
    out = node.output[0]
    rank = graph.rank(out)
    if rank is None:
        raise Blocked("output shape unknown")
    axis = 1 if producer.op == "Conv" else rank - 1
    walk = Walk(width=producer.output_dim)
    walk.tensors[out] = (axis, 1)
    queue: deque[str] = deque([out])
    while queue:
        tensor = queue.popleft()
        if tensor in graph.outputs:
            raise Blocked(f"the channels reach the graph output {tensor!r}")
        users = graph.consumers.get(tensor, [])
        if not users:
            raise Blocked(f"tensor {tensor!r} is never read")
        for user in users:
            for produced in step(graph, walk, tensor, user, single, candidates):
                queue.append(produced)
    for name, node in walk.pending.items():
        variables = [i for i in node.input if i and graph.constant(i) is None]
        if not all(v in walk.tensors for v in variables):
            raise Blocked(f"{node.op_type} {name!r} joins the channels with another tensor "
                          "(a residual or a coupling)")
    if len(walk.consumers) != 1:
        raise Blocked(f"read by {len(walk.consumers)} consumers" if walk.consumers
                      else "no MatMul/Gemm/Conv consumer reads the channels")
    consumer_node, consumer_axis, group = walk.consumers[0]
    consumer = single.get(consumer_node.name)
    if consumer is None:
        raise Blocked(f"the consumer {consumer_node.name!r} is not a single-site prunable node")
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


def structure_candidates(
    analysis: GraphAnalysis, structures: StructureAnalysis,
) -> dict[str, Candidate]:
    """The consumer candidate of every structure, by structure name."""
    by_name = {c.name: c for c in analysis.candidates}
    return {s.name: by_name[s.consumer] for s in structures.structures}


def describe_blocked(blocked: Sequence[BlockedStructure]) -> list[str]:
    return [f"{b.producer}: {b.reason}" for b in blocked]
