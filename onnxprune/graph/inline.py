"""Inlining an ``If`` branch into the graph that holds the ``If``.

A branch is a graph without inputs: its nodes read outer-scope tensors by name (those keep working
unchanged once the nodes sit in the outer graph) and their own local tensors. Local names could
clash with names elsewhere in the model (the other branch, a sibling ``If`` built from the same
template), so every local name is renamed to a fresh one; the branch outputs become the ``If``
outputs, by renaming their producers where that is unambiguous and through an ``Identity`` where it
is not (an output that is an outer tensor, a local initializer, or listed twice).
"""

from __future__ import annotations

import onnx
from onnx import helper


def subgraph_attrs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held in ``node``'s attributes (If branches, Loop/Scan bodies)."""
    graphs: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def all_names(graph: onnx.GraphProto, into: set[str] | None = None) -> set[str]:
    """Every tensor and node name used anywhere in ``graph`` and its subgraphs."""
    names = into if into is not None else set()
    names.update(i.name for i in graph.input)
    names.update(o.name for o in graph.output)
    names.update(t.name for t in graph.initializer)
    names.update(t.values.name for t in graph.sparse_initializer)
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
        for sub in subgraph_attrs(node):
            all_names(sub, names)
    return names


def _fresh(base: str, taken: set[str]) -> str:
    name, counter = base, 0
    while name in taken:
        counter += 1
        name = f"{base}_{counter}"
    taken.add(name)
    return name


def _rename(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Apply ``mapping`` to every tensor reference in ``graph`` and its subgraphs, in place."""
    for node in graph.node:
        node.input[:] = [mapping.get(i, i) for i in node.input]
        node.output[:] = [mapping.get(o, o) for o in node.output]
        for sub in subgraph_attrs(node):
            _rename(sub, mapping)
            for output in sub.output:  # a body output may be an outer tensor
                output.name = mapping.get(output.name, output.name)


def inline_branch(model: onnx.ModelProto, if_node: onnx.NodeProto, branch: onnx.GraphProto,
                  prefix: str) -> list[onnx.NodeProto]:
    """The nodes that replace ``if_node`` when ``branch`` is taken. Call it once ``if_node`` has
    been removed from ``model``'s main graph, and splice the nodes in at the ``If``'s position,
    which keeps the graph topologically sorted.

    The branch's initializers are added to ``model``'s main graph under their new names.

    Raises:
        ValueError: the branch holds sparse initializers or has inputs (not a valid If branch).
    """
    if branch.input or branch.sparse_initializer:
        raise ValueError(f"If node {if_node.name!r}: branch with inputs or sparse initializers")
    branch = onnx.GraphProto.FromString(branch.SerializeToString())  # never edit the original
    # Names the rest of the model uses (the If is already out of it: its branches' names are free).
    taken = all_names(model.graph) | set(if_node.input) | set(if_node.output)
    local_outputs = [o for n in branch.node for o in n.output if o]
    local = [*local_outputs, *(t.name for t in branch.initializer)]
    output_names = [o.name for o in branch.output]
    mapping: dict[str, str] = {}
    direct: set[str] = set()
    for if_out, br_out in zip(if_node.output, output_names, strict=True):
        # A branch output produced by one of its nodes, and listed once, is renamed to the If's
        # output directly; any other case goes through an Identity below.
        if if_out and br_out in local_outputs and output_names.count(br_out) == 1 \
                and br_out not in mapping:
            mapping[br_out] = if_out
            direct.add(br_out)
    taken.update(mapping.values())
    for name in local:
        if name not in mapping:
            mapping[name] = _fresh(name if name not in taken else f"{prefix}/{name}", taken)
    _rename(branch, mapping)
    nodes: list[onnx.NodeProto] = []
    for node in branch.node:
        base = node.name if node.name and node.name not in taken \
            else f"{prefix}/{node.name or node.op_type}"
        node.name = _fresh(base, taken)
        nodes.append(node)
    for if_out, br_out in zip(if_node.output, output_names, strict=True):
        if if_out and br_out not in direct:
            nodes.append(helper.make_node(
                "Identity", [mapping.get(br_out, br_out)], [if_out],
                name=_fresh(f"{prefix}/output_{if_out}", taken),
            ))
    for tensor in branch.initializer:
        tensor.name = mapping[tensor.name]
        model.graph.initializer.append(tensor)
    return nodes
