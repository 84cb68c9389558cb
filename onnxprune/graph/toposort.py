"""Putting a graph's nodes in topological order, as ONNX Runtime does before running it.

``onnx.checker`` refuses a graph whose nodes are not listed in dependency order, while ONNX
Runtime sorts them itself and runs the model. Exporters and converters do write such graphs
(onnxruntime's own ``float16`` converter appends the input Casts at the end of the node list), and
onnxprune must not be stricter than the runtime the user deploys on, so the loader sorts first.
"""

from __future__ import annotations

import heapq
import logging

import onnx

logger = logging.getLogger("onnxprune")


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Every tensor name the node's subgraphs (If/Loop/Scan bodies) read, at any depth.

    A body may read outer-scope tensors without listing them as node inputs; those are
    dependencies of the node too. Names the body produces itself are included harmlessly: they
    are not produced in the outer graph, so the sort ignores them.
    """
    names: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs)
        if attr.HasField("g"):
            graphs.append(attr.g)
        for graph in graphs:
            for inner in graph.node:
                names.update(i for i in inner.input if i)
                names.update(_subgraph_inputs(inner))
            names.update(o.name for o in graph.output)
    return names


def is_sorted(graph: onnx.GraphProto) -> bool:
    """True when every node reads only graph inputs, initializers or earlier nodes' outputs."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    for i, node in enumerate(graph.node):
        for name in (*node.input, *_subgraph_inputs(node)):
            if producer.get(name, -1) > i:
                return False
    return True


def toposort_graph(graph: onnx.GraphProto) -> bool:
    """Sort ``graph``'s nodes in place (stable: nodes keep their order where dependencies allow).

    Kahn's algorithm with the original position as priority, so an already sorted graph is left
    exactly as it is and a shuffled one gets a deterministic order. Cycles (never valid ONNX) are
    left in place for the checker to report.

    Returns:
        True when the order changed.
    """
    if is_sorted(graph):
        return False
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    consumers: list[list[int]] = [[] for _ in nodes]
    waiting = [0] * len(nodes)
    for i, node in enumerate(nodes):
        deps = {producer[name] for name in (*node.input, *_subgraph_inputs(node))
                if name in producer and producer[name] != i}
        waiting[i] = len(deps)
        for dep in deps:
            consumers[dep].append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in consumers[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) < len(nodes):  # a cycle: not ours to fix
        return False
    sorted_nodes = [nodes[i] for i in order]
    del graph.node[:]
    graph.node.extend(sorted_nodes)
    return True
