"""Writing chosen structure widths into a model: every tensor along a structure shrinks.

For each structure and its kept channels: the producer's output columns (MatMul/Gemm) or output
channels (Conv) and its bias, every member's per-channel constants, BatchNorm parameters and
depthwise conv weights (with their ``group``), the channel count in Reshape targets, and the
consumer's input rows / input channels — no restore Gather, since the structure is closed.

Weights are handled in the candidates' canonical orientation and written back as new
initializers (MatMul: W[K, N]; Gemm: canonical with ``transB = 0``, ``alpha = beta = 1``; Conv:
W[O, C, kh, kw]), so a node that is the consumer of one structure and the producer of the next
gets both cuts. Only weights and constants change: dynamic dimensions survive. Nodes and
initializers left dangling (the old weights and their Transpose/Constant chains) are removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.graph.candidates import Candidate
from onnxprune.structures.types import ChannelGroup, Structure


@dataclass(frozen=True)
class StructureCut:
    """One structure at one width.

    Attributes:
        structure: the structure.
        kept: ascending indices of the kept channels.
    """

    structure: Structure | ChannelGroup
    kept: np.ndarray


def consumer_rows(structure: Structure | ChannelGroup, candidate: Candidate,
                  kept: np.ndarray) -> np.ndarray:
    """Indices along the consumer's canonical reduction axis that belong to the kept channels.

    MatMul/Gemm: rows of W[K, N] (``consumer_group`` per channel). Conv: input channels of
    W[O, C, kh, kw].
    """
    positions = structure.positions(candidate.name, kept)
    if candidate.op == "Conv":
        return positions
    return _expand(positions, structure.group_of(candidate.name))


def _expand(positions: np.ndarray, group: int) -> np.ndarray:
    """Entries of ``positions`` when each channel is ``group`` consecutive entries."""
    return (np.asarray(positions, dtype=np.int64)[:, None] * group + np.arange(group)).reshape(-1)


class _Writer:
    """New initializers with unique names."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.names = {t.name for t in model.graph.initializer}
        self.names.update(o for n in model.graph.node for o in n.output)
        self.names.update(i.name for i in model.graph.input)

    def add(self, base: str, value: np.ndarray) -> str:
        name = base
        counter = 0
        while name in self.names:
            counter += 1
            name = f"{base}_{counter}"
        self.names.add(name)
        self.model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value),
                                                                    name))
        return name


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray:
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
                if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
                    return np.asarray(helper.get_attribute_value(attr))
    raise KeyError(f"{name!r} is not a constant of the model")


def _set_attr(node: onnx.NodeProto, name: str, value: object) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    node.attribute.append(helper.make_attribute(name, value))


def apply_cuts(
    model: onnx.ModelProto,
    cuts: Sequence[StructureCut],
    candidates: Mapping[str, Candidate],
    weights: Mapping[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """Shrink ``model`` (in place, and returned) along every cut.

    Args:
        model: the model holding the structures' nodes (the whole model, or a structure's
            isolated subgraph).
        cuts: the structures with their kept channels.
        candidates: the producer and consumer candidates by name.
        weights: canonical weights to write for candidates (e.g. a consumer's OBS-updated weight,
            zero on the removed rows); the candidate's own weight otherwise.
    """
    weights = dict(weights or {})
    writer = _Writer(model)
    nodes = {n.name: n for n in model.graph.node}
    canonical: dict[str, np.ndarray] = {}
    biases: dict[str, np.ndarray | None] = {}

    def current(name: str) -> np.ndarray:
        if name not in canonical:
            canonical[name] = np.asarray(weights.get(name, candidates[name].weight), np.float32)
            biases[name] = candidates[name].bias
        return canonical[name]

    for cut in cuts:
        structure, kept = cut.structure, np.asarray(cut.kept, dtype=np.int64)
        for name in structure.producers:
            producer = candidates[name]
            columns = _expand(structure.positions(name, kept, output=True),
                              structure.producer_group)
            w = current(name)
            canonical[name] = w[columns] if producer.op == "Conv" else w[:, columns]
            if biases[name] is not None:
                biases[name] = biases[name][columns]
        for name in structure.consumers:
            consumer = candidates[name]
            w = current(name)
            rows = consumer_rows(structure, consumer, kept)
            canonical[name] = w[:, rows] if consumer.op == "Conv" else w[rows]
        _cut_members(model, nodes, writer, structure, kept)
    for name in weights:
        current(name)
    for name, weight in canonical.items():
        _write_node(nodes[name], candidates[name], weight, biases[name], writer)
    remove_dangling(model)
    if cuts:  # recorded intermediate shapes name the old widths
        del model.graph.value_info[:]
    return model


def _cut_members(model: onnx.ModelProto, nodes: Mapping[str, onnx.NodeProto], writer: _Writer,
                 structure: Structure | ChannelGroup, kept: np.ndarray) -> None:
    for cut in structure.slices:
        node = nodes[cut.node]
        value = _constant(model, node.input[cut.input_index])
        index = _expand(structure.positions(cut.node, kept), cut.group)
        node.input[cut.input_index] = writer.add(f"{node.name}/cut{cut.input_index}",
                                                 np.take(value, index, axis=cut.axis))
    for name in structure.batchnorms:
        node = nodes[name]
        at = structure.positions(name, kept)
        for index in range(1, 5):
            value = _constant(model, node.input[index])
            node.input[index] = writer.add(f"{name}/cut{index}", value[at])
    for name in structure.depthwise:
        node = nodes[name]
        at = structure.positions(name, kept)
        node.input[1] = writer.add(f"{name}/weight", _constant(model, node.input[1])[at])
        if len(node.input) > 2 and node.input[2]:
            node.input[2] = writer.add(f"{name}/bias", _constant(model, node.input[2])[at])
        _set_attr(node, "group", len(at))
    for edit in structure.reshapes:
        if edit.node not in nodes:
            continue  # an isolated subgraph: its run-time shapes were fixed with -1 instead
        node = nodes[edit.node]
        target = (np.asarray(edit.known, dtype=np.int64) if edit.known is not None
                  else _constant(model, node.input[edit.input_index]).copy())
        target.reshape(-1)[edit.position] = len(structure.positions(edit.node, kept)) * edit.group
        node.input[edit.input_index] = writer.add(f"{node.name}/shape", target)
    for edit in structure.splits:
        _resize_split(model, nodes[edit.node], writer,
                      [int(np.isin(piece, kept).sum()) for piece in edit.pieces])


def _resize_split(model: onnx.ModelProto, node: onnx.NodeProto, writer: _Writer,
                  sizes: list[int]) -> None:
    """Give ``node`` (a Split) explicit piece sizes: its ``split`` input from opset 13 on (and
    no ``num_outputs``), else its ``split`` attribute."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:
        _set_attr(node, "split", sizes)
        return
    name = writer.add(f"{node.name}/split", np.asarray(sizes, dtype=np.int64))
    if len(node.input) > 1:
        node.input[1] = name
    else:
        node.input.append(name)
    kept = [a for a in node.attribute if a.name != "num_outputs"]
    del node.attribute[:]
    node.attribute.extend(kept)


def _write_node(node: onnx.NodeProto, candidate: Candidate, weight: np.ndarray,
                bias: np.ndarray | None, writer: _Writer) -> None:
    """Point ``node`` at the canonical ``weight`` (and ``bias``) as new initializers."""
    node.input[1] = writer.add(f"{node.name}/weight", weight.astype(np.float32))
    if candidate.op == "Gemm":
        _set_attr(node, "transB", 0)
        _set_attr(node, "alpha", 1.0)
        if bias is not None:
            _set_attr(node, "beta", 1.0)
            if len(node.input) > 2:
                node.input[2] = writer.add(f"{node.name}/bias", bias.astype(np.float32))
            else:
                node.input.append(writer.add(f"{node.name}/bias", bias.astype(np.float32)))
    elif candidate.op == "Conv" and bias is not None and len(node.input) > 2:
        node.input[2] = writer.add(f"{node.name}/bias", bias.astype(np.float32))


def remove_dangling(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nobody reads and initializers nobody uses (to a fixed point)."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {i for n in graph.node for i in n.input} | outputs
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)


def masked_consumer_weight(structure: Structure | ChannelGroup, candidate: Candidate,
                           weight: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``weight`` with every removed channel's rows zeroed (the masked-dense reference)."""
    mask = np.zeros(weight.shape[1] if candidate.op == "Conv" else weight.shape[0], bool)
    mask[consumer_rows(structure, candidate, kept)] = True
    out = np.array(weight, dtype=np.float32)
    if candidate.op == "Conv":
        out[:, ~mask] = 0.0
    else:
        out[~mask] = 0.0
    return out


def isolated_structure(
    model: onnx.ModelProto, structure: Structure | ChannelGroup,
    candidates: Mapping[str, Candidate],
) -> onnx.ModelProto:
    """The structure alone — producers, members, consumers — as a model timed on the EP.

    Its inputs are the producers' activations at the deployment shape (and any run-time tensor
    the structure reads, such as an attention mask), its outputs the consumers' outputs;
    constants are copied as initializers, Reshape targets computed at run time become constants
    (with -1 on the channel axis), and the producers and consumers read their canonical weights.
    What it times is what the structure's width changes. A coupled group's producers sit in
    different blocks; each reads its own activation, so the group is one closed subgraph.
    """
    from onnxprune.graph.load import stamp_ir_version

    wanted = set(structure.nodes)
    nodes = [onnx.NodeProto.FromString(n.SerializeToString())
             for n in model.graph.node if n.name in wanted]
    produced = {o for n in nodes for o in n.output}
    producers = [candidates[name] for name in structure.producers]
    consumers = [candidates[name] for name in structure.consumers]
    activations = {p.sites[0].activation: p.sites[0].input_shape for p in producers}
    fixed = dict(structure.fixed_shapes)
    external = {name for name, _, _ in structure.external_inputs}
    weighted = {c.name for c in (*producers, *consumers)}
    initializers = []
    seen: set[str] = set()
    for node in nodes:
        if node.name in fixed:
            node.input[1] = f"{node.name}/fixed_shape"
            initializers.append(numpy_helper.from_array(
                np.asarray(fixed[node.name], dtype=np.int64), node.input[1]))
        for index, name in enumerate(node.input):
            if (not name or name in produced or name in activations or name in seen
                    or name in external or (node.name in fixed and index == 1)):
                continue
            if node.name in weighted and index >= 1:
                continue  # written from the canonical weights below
            seen.add(name)
            initializers.append(numpy_helper.from_array(_constant(model, name), name))
    inputs = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape))
              for name, shape in activations.items() if name not in produced]
    inputs += [helper.make_tensor_value_info(name, elem, list(shape))
               for name, shape, elem in structure.external_inputs]
    outputs = [helper.make_tensor_value_info(c.sites[0].output, onnx.TensorProto.FLOAT,
                                             list(c.sites[0].output_shape)) for c in consumers]
    graph = helper.make_graph(nodes, f"structure {structure.name}", inputs, outputs,
                              initializers)
    isolated = helper.make_model(graph, opset_imports=list(model.opset_import))
    by_name = {n.name: n for n in isolated.graph.node}
    writer = _Writer(isolated)
    for cand in {c.name: c for c in (*producers, *consumers)}.values():
        _write_node(by_name[cand.name], cand, cand.weight, cand.bias, writer)
    return stamp_ir_version(isolated)
