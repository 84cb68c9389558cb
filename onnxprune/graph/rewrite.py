"""Graph rewrites that write a pruned weight back into a model as standard ONNX ops.

Every function here is a plain function of an onnx-graphsurgeon :class:`gs.Graph` and a
:class:`~onnxprune.graph.candidates.Candidate`. A rewrite finds each of the candidate's nodes by
name, disconnects it, and builds replacement nodes that write into the node's ORIGINAL output
tensor, so consumers and graph outputs stay connected. New nodes and tensors are named after the
original node (``<node>/block_gather``...) and made unique. Constants built for a candidate are
shared by all of its nodes (a weight shared by several Gemms is packed once). The original weight
initializer is not touched: other consumers keep it, and ``graph.cleanup()`` drops it when unused.

The caller finishes with::

    graph.cleanup().toposort()
    model = stamp_ir_version(gs.export_onnx(graph))

Every rewrite is exact: the new subgraph computes ``X·W_pruned + bias`` (Conv: the convolution with
the pruned weight) to float tolerance, at any value of the dynamic dimensions. Reshape targets use
``-1`` or are derived from ``Shape(X)``, never the profiled batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
import scipy.special

from onnxprune.graph.candidates import Candidate, NodeSite

logger = logging.getLogger("onnxprune")

_FLOAT = np.float32
_INT = np.int64


class _Builder:
    """Creates uniquely named tensors and nodes for one rewrite.

    Names are ``<prefix>/<what>``; a numeric suffix is added when the name already exists in the
    graph (tensor or node names).
    """

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.taken = set(graph.tensors().keys()) | {node.name for node in graph.nodes}

    def name(self, base: str) -> str:
        name, counter = base, 0
        while name in self.taken:
            counter += 1
            name = f"{base}_{counter}"
        self.taken.add(name)
        return name

    def const(self, base: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(self.name(base), np.ascontiguousarray(values))

    def var(self, base: str, dtype: type = _FLOAT) -> gs.Variable:
        return gs.Variable(self.name(base), dtype=dtype)

    def node(
        self,
        op: str,
        base: str,
        inputs: Sequence[gs.Tensor],
        output: gs.Variable | str,
        attrs: dict | None = None,
        dtype: type = _FLOAT,
    ) -> gs.Variable:
        """Append an ``op`` node writing ``output`` (an existing tensor, or a base name)."""
        out = output if isinstance(output, gs.Variable) else self.var(output, dtype)
        node = gs.Node(op, self.name(base), dict(attrs or {}), list(inputs), [out])
        self.graph.nodes.append(node)
        return out


def find_node(graph: gs.Graph, name: str) -> gs.Node:
    """The node called ``name``.

    Raises:
        KeyError: no node has that name (e.g. it was already rewritten).
    """
    for node in graph.nodes:
        if node.name == name:
            return node
    raise KeyError(f"node {name!r} is not in the graph (already rewritten?)")


def detach_site(graph: gs.Graph, site: NodeSite) -> tuple[gs.Node, gs.Tensor, gs.Variable]:
    """Disconnect the node of ``site``; return (node, its activation input, its output tensor).

    The node keeps its attributes (callers read them) but loses all edges, so
    ``graph.cleanup()`` removes it. The output tensor keeps its consumers and graph-output status.
    """
    node = find_node(graph, site.node)
    if not node.inputs or not node.outputs:
        raise ValueError(f"node {site.node!r} has no inputs or outputs")
    activation, output = node.inputs[0], node.outputs[0]
    if activation.name != site.activation or output.name != site.output:
        raise ValueError(
            f"node {site.node!r} reads {activation.name!r} -> {output.name!r}, but the candidate "
            f"says {site.activation!r} -> {site.output!r}"
        )
    node.inputs.clear()
    node.outputs.clear()
    return node, activation, output


def _add_bias(
    build: _Builder, prefix: str, y: gs.Variable, bias: gs.Constant | None, out: gs.Variable
) -> None:
    """``out = y + bias``, or rename ``y``'s producer to write ``out`` when there is no bias."""
    if bias is None:
        producer = y.inputs[0]
        producer.outputs[0] = out
        return
    build.node("Add", f"{prefix}/bias", [y, bias], out)


def _leading_dims_target(build: _Builder, prefix: str, x: gs.Tensor, last: int) -> gs.Variable:
    """A Reshape target ``Shape(x)[:-1] + [last]`` computed at run time (keeps dynamic dims)."""
    if build.graph.opset >= 15:
        lead = build.node(
            "Shape",
            f"{prefix}/shape",
            [x],
            f"{prefix}/lead_dims",
            {"start": 0, "end": -1},
            dtype=_INT,
        )
    else:
        shape = build.node("Shape", f"{prefix}/shape", [x], f"{prefix}/shape", dtype=_INT)
        lead = build.node(
            "Slice",
            f"{prefix}/lead",
            [
                shape,
                build.const(f"{prefix}/start", np.array([0], _INT)),
                build.const(f"{prefix}/end", np.array([-1], _INT)),
            ],
            f"{prefix}/lead_dims",
            dtype=_INT,
        )
    return build.node(
        "Concat",
        f"{prefix}/target",
        [lead, build.const(f"{prefix}/last", np.array([last], _INT))],
        f"{prefix}/target",
        {"axis": 0},
        dtype=_INT,
    )


# --------------------------------------------------------------------------- masked dense


def replace_weight(graph: gs.Graph, candidate: Candidate, weight: np.ndarray) -> None:
    """Masked dense: every node of ``candidate`` reads ``weight`` instead of its stored weight.

    The node itself is kept (same name, op and fusions in ORT). Gemm nodes get ``transB=0`` and
    ``alpha=1`` because the canonical weight has both folded in; ``transA``, ``beta`` and C stay.

    Args:
        graph: the graph, changed in place.
        candidate: the candidate whose nodes are rewritten.
        weight: the pruned weight in canonical orientation (MatMul/Gemm W[K, N]; Conv
            W[O, C, kh, kw]).
    """
    if weight.shape != candidate.weight.shape:
        raise ValueError(f"weight must be {candidate.weight.shape}, got {weight.shape}")
    build = _Builder(graph)
    constant = build.const(f"{candidate.name}/pruned_weight", weight.astype(_FLOAT))
    replace_weight_tensor(graph, candidate, constant)


def replace_weight_tensor(graph: gs.Graph, candidate: Candidate, constant: gs.Constant) -> None:
    """Like :func:`replace_weight` with a ready-made (possibly sparse) constant tensor."""
    for site in candidate.sites:
        node = find_node(graph, site.node)
        node.inputs[1] = constant
        if node.op == "Gemm":
            node.attrs["transB"] = 0
            node.attrs["alpha"] = 1.0


# --------------------------------------------------------------------------- block (MatMul/Gemm)


def block_gather_matmul(
    graph: gs.Graph, candidate: Candidate, index: np.ndarray, packed: np.ndarray, bk: int
) -> None:
    """Rewrite a MatMul/Gemm candidate as a gather of kept input blocks plus a batched MatMul.

    With G = N/bn output groups, each keeping the same number ``keep`` of K-blocks of size ``bk``::

        X[..., K] -> Reshape [M, K/bk, bk] -> Gather(axis=1, index) -> [M, G·keep, bk]
          -> Reshape [M, G, keep·bk] -> Transpose [G, M, keep·bk] -> MatMul packed[G, keep·bk, bn]
          -> [G, M, bn] -> Transpose [M, G, bn] -> Reshape [..., N] (+ bias)

    (ORT fuses the first Transpose into its MatMul.) This flattened form measured fastest on ORT
    CPU: a rank-preserving variant with a broadcast 4-D MatMul was 1.4-3x slower at small row
    counts. Gemm's ``transA`` becomes a Transpose of X; alpha is already in ``packed``; the bias
    (beta·C) is added at the end.

    Args:
        graph: the graph, changed in place.
        candidate: a MatMul or Gemm candidate.
        index: int [G, keep], the K-blocks each output group reads, ascending.
        packed: float32 [G, keep·bk, bn], the kept blocks of W stacked per group.
        bk: K-block size.
    """
    if candidate.op not in ("MatMul", "Gemm"):
        raise ValueError(f"block_gather_matmul needs a MatMul/Gemm candidate, got {candidate.op}")
    k_dim, n_dim = candidate.weight.shape
    groups, keep = index.shape
    bn = n_dim // groups
    if packed.shape != (groups, keep * bk, bn) or k_dim % bk or n_dim % bn:
        raise ValueError(
            f"packed weight {packed.shape} does not fit W {candidate.weight.shape} with bk={bk}, "
            f"index {index.shape}"
        )
    build = _Builder(graph)
    name = candidate.name
    flat_index = build.const(f"{name}/block_index", index.reshape(-1).astype(_INT))
    weight = build.const(f"{name}/block_weight", packed.astype(_FLOAT))
    split = build.const(f"{name}/split_shape", np.array([-1, k_dim // bk, bk], _INT))
    grouped = build.const(f"{name}/group_shape", np.array([-1, groups, keep * bk], _INT))
    flat_out = build.const(f"{name}/out_shape", np.array([-1, n_dim], _INT))
    bias = None if candidate.bias is None else build.const(f"{name}/bias", candidate.bias)
    trans_a = int(candidate.attrs.get("trans_a", 0)) if candidate.op == "Gemm" else 0

    for site in candidate.sites:
        _, x, out = detach_site(graph, site)
        p = site.node
        if trans_a:
            x = build.node("Transpose", f"{p}/transpose_a", [x], f"{p}/x", {"perm": [1, 0]})
        rank = len(site.input_shape)
        h = build.node("Reshape", f"{p}/block_split", [x, split], f"{p}/x_blocks")
        h = build.node("Gather", f"{p}/block_gather", [h, flat_index], f"{p}/x_kept", {"axis": 1})
        h = build.node("Reshape", f"{p}/block_group", [h, grouped], f"{p}/x_grouped")
        h = build.node("Transpose", f"{p}/group_first", [h], f"{p}/x_by_group", {"perm": [1, 0, 2]})
        h = build.node("MatMul", f"{p}/block_matmul", [h, weight], f"{p}/y_by_group")
        h = build.node("Transpose", f"{p}/rows_first", [h], f"{p}/y_rows", {"perm": [1, 0, 2]})
        target = flat_out if rank == 2 else _leading_dims_target(build, p, x, n_dim)
        h = build.node("Reshape", f"{p}/block_merge", [h, target], f"{p}/y")
        _add_bias(build, p, h, bias, out)


# --------------------------------------------------------------------------- block (Conv)


def _conv_attrs(candidate: Candidate, group: int) -> dict:
    attrs = candidate.attrs
    return {
        "kernel_shape": list(attrs["kernel"]),
        "strides": list(attrs["strides"]),
        "pads": [attrs["pads"][0], attrs["pads"][1], attrs["pads"][2], attrs["pads"][3]],
        "dilations": list(attrs["dilations"]),
        "group": group,
    }


def conv_gather_grouped(
    graph: gs.Graph, candidate: Candidate, channel_index: np.ndarray, packed: np.ndarray
) -> None:
    """Rewrite a Conv candidate as ``Gather(x, channel_index, axis=1)`` + a grouped Conv.

    With G = O/bo output-channel blocks each reading ``keep·bi`` input channels, ``channel_index``
    lists, group after group, the input channels group g reads; the grouped Conv
    (``group = G``) then sees exactly those channels for its ``bo`` output channels. Strides,
    pads, dilations and the bias are the original ones.

    Args:
        graph: the graph, changed in place.
        candidate: a Conv candidate (group = 1).
        channel_index: int [G·keep·bi], input channel read at each gathered position.
        packed: float32 [O, keep·bi, kh, kw], the kept input channels of each output channel.
    """
    if candidate.op != "Conv":
        raise ValueError(f"conv_gather_grouped needs a Conv candidate, got {candidate.op}")
    out_channels = candidate.weight.shape[0]
    per_group = packed.shape[1]
    if packed.shape[0] != out_channels or channel_index.size % per_group:
        raise ValueError(f"packed weight {packed.shape} does not fit index {channel_index.shape}")
    groups = channel_index.size // per_group
    if out_channels % groups:
        raise ValueError(f"{groups} groups do not divide {out_channels} output channels")
    build = _Builder(graph)
    name = candidate.name
    index = build.const(f"{name}/channel_index", channel_index.astype(_INT))
    weight = build.const(f"{name}/grouped_weight", packed.astype(_FLOAT))
    inputs = [weight]
    if candidate.bias is not None:
        inputs.append(build.const(f"{name}/bias", candidate.bias))
    for site in candidate.sites:
        _, x, out = detach_site(graph, site)
        p = site.node
        h = build.node("Gather", f"{p}/channel_gather", [x, index], f"{p}/x_kept", {"axis": 1})
        build.node("Conv", f"{p}/grouped_conv", [h, *inputs], out, _conv_attrs(candidate, groups))


# --------------------------------------------------------------------------- channel


def channel_restore(
    graph: gs.Graph, candidate: Candidate, kept: np.ndarray, weight: np.ndarray
) -> None:
    """Rewrite a candidate to compute only its kept output channels, then restore the full shape.

    The smaller node computes ``keep + 1`` channels: the kept ones and one all-zero channel (an
    extra zero column of W, so no dynamic-shaped zeros are needed and a NaN/Inf input propagates as
    in the masked-dense node). A Gather over the channel axis then maps every removed channel to
    the zero channel, and the full bias is added, so removed channels output exactly their bias,
    like the masked-dense model. MatMul/Gemm gather along the last axis through a transpose pair
    (ORT's Gather on the last axis copies element by element: measured 15x slower); Conv gathers
    axis 1 directly. When every removed channel has zero bias, the bias goes into the small node.

    Args:
        graph: the graph, changed in place.
        candidate: the candidate.
        kept: int [keep], ascending indices of the kept output channels.
        weight: the pruned weight in canonical orientation (only kept channels are read).
    """
    kept = np.asarray(kept, dtype=_INT)
    n_out = candidate.output_dim
    keep = kept.size
    restore = np.full(n_out, keep, dtype=_INT)
    restore[kept] = np.arange(keep, dtype=_INT)
    bias = candidate.bias
    removed = np.ones(n_out, dtype=bool)
    removed[kept] = False
    bias_inside = bias is not None and not np.any(bias[removed])

    build = _Builder(graph)
    name = candidate.name
    if candidate.op == "Conv":
        small = np.concatenate([weight[kept], np.zeros((1, *weight.shape[1:]), _FLOAT)], axis=0)
    else:
        small = np.concatenate([weight[:, kept], np.zeros((weight.shape[0], 1), _FLOAT)], axis=1)
    small_weight = build.const(f"{name}/kept_weight", small.astype(_FLOAT))
    index = build.const(f"{name}/restore_index", restore)
    small_bias = full_bias = None
    if bias_inside:
        small_bias = build.const(f"{name}/kept_bias", np.append(bias[kept], 0).astype(_FLOAT))
    elif bias is not None:
        shape = (n_out, 1, 1) if candidate.op == "Conv" else (n_out,)
        full_bias = build.const(f"{name}/bias", bias.reshape(shape))

    for site in candidate.sites:
        _, x, out = detach_site(graph, site)
        p = site.node
        extra = [small_bias] if small_bias is not None else []
        if candidate.op == "Conv":
            h = build.node(
                "Conv",
                f"{p}/kept_conv",
                [x, small_weight, *extra],
                f"{p}/y_kept",
                _conv_attrs(candidate, 1),
            )
            h = build.node("Gather", f"{p}/restore", [h, index], f"{p}/y", {"axis": 1})
        else:
            if candidate.op == "Gemm":
                attrs = {"transA": int(candidate.attrs.get("trans_a", 0))}
                h = build.node(
                    "Gemm", f"{p}/kept_gemm", [x, small_weight, *extra], f"{p}/y_kept", attrs
                )
                rank = 2
            else:
                h = build.node("MatMul", f"{p}/kept_matmul", [x, small_weight], f"{p}/y_kept")
                rank = len(site.output_shape)
                if small_bias is not None:
                    h = build.node("Add", f"{p}/kept_bias", [h, small_bias], f"{p}/y_kept_b")
            perm = [rank - 1, *range(rank - 1)]
            back = [*range(1, rank), 0]
            h = build.node("Transpose", f"{p}/channels_first", [h], f"{p}/y_kept_t", {"perm": perm})
            h = build.node("Gather", f"{p}/restore", [h, index], f"{p}/y_t", {"axis": 0})
            h = build.node("Transpose", f"{p}/channels_last", [h], f"{p}/y", {"perm": back})
        _add_bias(build, p, h, full_bias, out)


# --------------------------------------------------------------------------- folding restores

_UNARY = {
    "Identity": lambda v, node: v,
    "Relu": lambda v, node: np.maximum(v, 0),
    "LeakyRelu": lambda v, node: np.where(v >= 0, v, v * np.float32(node.attrs.get("alpha", 0.01))),
    "Sigmoid": lambda v, node: 1 / (1 + np.exp(-v)),
    "Tanh": lambda v, node: np.tanh(v),
    "Neg": lambda v, node: -v,
    "Abs": lambda v, node: np.abs(v),
    "Exp": lambda v, node: np.exp(v),
    "Erf": lambda v, node: scipy.special.erf(v),
}
_BINARY = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Pow": np.power,
}
_SINKS = ("MatMul", "Gemm", "Conv")


def _constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """Value of an initializer or a Constant node's output; None otherwise."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    return None


def _single_consumer(tensor: gs.Tensor, graph: gs.Graph) -> gs.Node | None:
    if len(tensor.outputs) != 1 or tensor in graph.outputs:
        return None
    return tensor.outputs[0]


@dataclass
class _Restore:
    """A matched :func:`channel_restore` subgraph (see :func:`fold_channel_restores`).

    Attributes:
        small: the node computing the kept channels plus the zero slot.
        keep: number of kept channels (the zero slot is channel ``keep`` of ``small``).
        kept: [keep] original channel of each kept one, ascending.
        axis, rank: channel axis and rank of the restored tensor.
        restore_nodes: the Transpose/Gather nodes that restore the shape.
        bias_add: the Add of the full bias after the restore, if any.
        output: the restored tensor (the original node's output, or the bias Add's).
        removed_value: [N] what a removed channel holds in ``output`` (its bias, or 0).
    """

    small: gs.Node
    keep: int
    kept: np.ndarray
    axis: int
    rank: int
    restore_nodes: list[gs.Node]
    bias_add: gs.Node | None
    output: gs.Variable
    removed_value: np.ndarray


def _match_restore(gather: gs.Node, graph: gs.Graph) -> _Restore | None:
    """Match small node -> [Transpose] -> Gather -> [Transpose] -> [Add bias] at ``gather``."""
    if gather.op != "Gather" or len(gather.inputs) != 2:
        return None
    index = _constant_value(gather.inputs[1])
    if index is None or index.ndim != 1 or index.dtype.kind not in "iu" or index.size < 2:
        return None
    data = gather.inputs[0]
    if len(data.inputs) != 1 or len(data.outputs) != 1:
        return None
    producer = data.inputs[0]
    nodes = [gather]
    axis = int(gather.attrs.get("axis", 0))
    if producer.op == "Transpose":  # MatMul/Gemm form: channels moved first
        first = producer
        perm = list(first.attrs.get("perm", []))
        rank = len(perm)
        if rank < 2 or perm != [rank - 1, *range(rank - 1)] or axis != 0:
            return None
        if len(first.inputs[0].inputs) != 1 or len(first.inputs[0].outputs) != 1:
            return None
        small = first.inputs[0].inputs[0]
        second = _single_consumer(gather.outputs[0], graph)
        if second is None or second.op != "Transpose":
            return None
        if list(second.attrs.get("perm", [])) != [*range(1, rank), 0]:
            return None
        nodes = [first, gather, second]
        if small.op not in ("MatMul", "Gemm"):
            return None
        if small.op == "Gemm" and (
            small.attrs.get("transB", 0) or float(small.attrs.get("alpha", 1.0)) != 1.0
        ):
            return None
        channel_axis = 1
    elif producer.op == "Conv" and axis == 1:
        small, rank, channel_axis = producer, 4, 0
        if int(small.attrs.get("group", 1)) != 1:
            return None
    else:
        return None
    weight = _constant_value(small.inputs[1]) if len(small.inputs) > 1 else None
    if weight is None or weight.ndim < 2:
        return None
    slots = weight.shape[channel_axis]
    keep = slots - 1
    zero_slot = np.take(weight, keep, axis=channel_axis)
    if np.any(zero_slot) or index.max() != keep or index.min() < 0:
        return None
    kept_positions = np.flatnonzero(index != keep)
    if not np.array_equal(index[kept_positions], np.arange(keep)):
        return None  # only the layout's own restore (kept channels in order) is folded
    if len(small.inputs) > 2:  # the small node's own bias must leave the zero slot at zero
        small_bias = _constant_value(small.inputs[2])
        if small_bias is None or small_bias.size not in (1, slots) or small_bias.reshape(-1)[-1]:
            return None
    tail = nodes[-1].outputs[0]
    removed_value = np.zeros(index.size, np.float32)
    bias_add = None
    consumer = _single_consumer(tail, graph)
    if consumer is not None and consumer.op == "Add" and consumer.inputs[0] is tail:
        bias = _constant_value(consumer.inputs[1])
        shape = (index.size, 1, 1) if small.op == "Conv" else (index.size,)
        if bias is not None and bias.shape == shape:
            bias_add = consumer
            removed_value = bias.reshape(-1).astype(np.float32)
            tail = consumer.outputs[0]
    return _Restore(
        small,
        keep,
        kept_positions,
        1 if small.op == "Conv" else rank - 1,
        rank,
        nodes,
        bias_add,
        tail,
        removed_value,
    )


def _channel_vector(value: np.ndarray, axis: int, rank: int, channels: int) -> np.ndarray | None:
    """A constant operand as a per-channel [channels] vector, or None if it is not one."""
    if value.ndim > rank or value.dtype != np.float32:
        return None
    full = value.reshape((1,) * (rank - value.ndim) + value.shape)
    other = [d for i, d in enumerate(full.shape) if i != axis]
    if any(d != 1 for d in other) or full.shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(full.reshape(-1), (channels,)).astype(np.float32)


def fold_channel_restores(graph: gs.Graph) -> int:
    """Shrink the consumers of a channel-pruned node instead of restoring its full output.

    A restore built by :func:`channel_restore` is folded when everything between it and the next
    MatMul / Gemm / Conv consumers (constant weight, reading the path as their activation) is a
    region of elementwise ops: Add/Sub/Mul/Div/Pow with scalar or per-channel constants or with
    each other (so a GELU exported as Div/Erf/Add/Mul/Mul qualifies), Relu, LeakyRelu, Sigmoid,
    Tanh, Neg, Abs, Exp, Erf, Identity, and BatchNormalization after a Conv. The restore is then
    removed: the producer keeps its ``keep`` channels, per-channel constants in the region are
    gathered, every consumer's weight loses the removed input channels, and the constant those
    channels carried (``f(bias)``, evaluated through the region) is folded into the consumer's
    bias. A padded Conv consumer accepts this only when that constant is 0 (padding makes its
    contribution position-dependent). Residual Adds with other tensors, Concats, graph outputs and
    any other op keep the plain restore, which is always exact.

    Args:
        graph: the graph after materialization, changed in place (run ``cleanup()`` after).

    Returns:
        How many restores were folded.
    """
    folded = 0
    for gather in [node for node in graph.nodes if node.op == "Gather"]:
        if not gather.outputs:
            continue
        match = _match_restore(gather, graph)
        if match is not None and _fold(graph, match):
            folded += 1
    if folded:
        logger.debug("folded %d channel restores into their consumers", folded)
    return folded


@dataclass
class _Region:
    """The elementwise nodes between a restore and its consumers.

    Attributes:
        nodes: the region's nodes, in evaluation order.
        values: tensor name -> [N] value the removed channels hold in that tensor.
        sinks: (consumer node, name of the region tensor it reads as its activation).
    """

    nodes: list[gs.Node] = field(default_factory=list)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    sinks: list[tuple[gs.Node, str]] = field(default_factory=list)


def _region(graph: gs.Graph, match: _Restore) -> _Region | None:
    """Walk forward from the restore; None when anything but the supported ops is reached."""
    channels = match.removed_value.size
    region = _Region()
    region.values[match.output.name] = match.removed_value.copy()
    frontier = [match.output]
    pending: dict[str, gs.Node] = {}
    while frontier or pending:
        progressed = False
        while frontier:
            tensor = frontier.pop()
            if tensor in graph.outputs or not tensor.outputs:
                return None
            for node in tensor.outputs:
                if (
                    node.op in _SINKS
                    and node.inputs[0] is tensor
                    and len(node.inputs) > 1
                    and (node.inputs[1].name not in region.values)
                ):
                    if all(sink is not node for sink, _ in region.sinks):
                        region.sinks.append((node, tensor.name))
                    continue
                pending[node.name] = node
        for name, node in list(pending.items()):
            if not all(
                t.name in region.values or _constant_value(t) is not None for t in node.inputs
            ):
                continue  # wait for its other region input
            value = _evaluate(node, region.values, match, channels)
            if value is None or len(node.outputs) != 1:
                return None
            region.values[node.outputs[0].name] = value
            region.nodes.append(node)
            frontier.append(node.outputs[0])
            del pending[name]
            progressed = True
        if not frontier and pending and not progressed:
            return None  # a node reads a run-time tensor from outside the region
    return region if region.sinks else None


def _evaluate(
    node: gs.Node, values: dict[str, np.ndarray], match: _Restore, channels: int
) -> np.ndarray | None:
    """The removed-channel value of ``node``'s output, or None if the op is not foldable."""

    def operand(tensor: gs.Tensor) -> np.ndarray | None:
        if tensor.name in values:
            return values[tensor.name]
        constant = _constant_value(tensor)
        if constant is None:
            return None
        return _channel_vector(constant, match.axis, match.rank, channels)

    with np.errstate(all="ignore"):
        if node.op in _UNARY and len(node.inputs) == 1:
            return _UNARY[node.op](values[node.inputs[0].name], node).astype(np.float32)
        if node.op in _BINARY and len(node.inputs) == 2:
            a, b = operand(node.inputs[0]), operand(node.inputs[1])
            if a is None or b is None:
                return None
            return _BINARY[node.op](a, b).astype(np.float32)
        if node.op == "BatchNormalization" and match.small.op == "Conv":
            params = [_constant_value(t) for t in node.inputs[1:5]]
            if node.inputs[0].name not in values or any(
                p is None or p.shape != (channels,) for p in params
            ):
                return None
            scale, shift, mean, var = params
            eps = np.float32(node.attrs.get("epsilon", 1e-5))
            x = values[node.inputs[0].name]
            return ((x - mean) / np.sqrt(var + eps) * scale + shift).astype(np.float32)
    return None


def _fold(graph: gs.Graph, match: _Restore) -> bool:
    region = _region(graph, match)
    if region is None:
        return False
    removed = np.ones(match.removed_value.size, dtype=bool)
    removed[match.kept] = False
    contributions = []
    for sink, tensor_name in region.sinks:
        carried = region.values[tensor_name]
        if not np.all(np.isfinite(carried[removed])):
            return False
        carried = np.where(removed, carried, 0).astype(np.float32)
        contribution = _consumer_contribution(sink, carried, match)
        if contribution is None:
            return False
        contributions.append(contribution)
    _apply_fold(graph, match, region, removed, contributions)
    return True


def _consumer_contribution(
    consumer: gs.Node, carried: np.ndarray, match: _Restore
) -> np.ndarray | None:
    """The removed channels' share of the consumer's output ([outputs]); None: cannot fold."""
    if any(_constant_value(t) is None for t in consumer.inputs[1:]):
        return None  # weight and bias must be constants (not tensors of the region)
    weight = _constant_value(consumer.inputs[1])
    if weight.dtype != np.float32:
        return None
    channels = carried.size
    if consumer.op == "Conv":
        if match.small.op != "Conv" or weight.ndim != 4 or weight.shape[1] != channels:
            return None
        if int(consumer.attrs.get("group", 1)) != 1:
            return None
        contribution = np.einsum("ocij,c->o", weight, carried)
        auto_pad = consumer.attrs.get("auto_pad", "NOTSET")
        padded = any(consumer.attrs.get("pads", [0])) or auto_pad not in ("NOTSET", "VALID")
        if padded and np.any(carried):
            return None
        return contribution.astype(np.float32)
    if match.small.op == "Conv" or weight.ndim != 2:
        return None
    if consumer.op == "Gemm":
        if consumer.attrs.get("transA", 0):
            return None
        b = weight.T if consumer.attrs.get("transB", 0) else weight
        if b.shape[0] != channels:
            return None
        return (np.float32(consumer.attrs.get("alpha", 1.0)) * (carried @ b)).astype(np.float32)
    if weight.shape[0] != channels:
        return None
    return (carried @ weight).astype(np.float32)


def _apply_fold(
    graph: gs.Graph,
    match: _Restore,
    region: _Region,
    removed: np.ndarray,
    contributions: list[np.ndarray],
) -> None:
    build = _Builder(graph)
    small, keep, kept = match.small, match.keep, match.kept
    prefix = small.name
    # 1. The producer computes only its kept channels (drop the zero slot), no restore.
    axis = 0 if small.op == "Conv" else 1
    weight = _constant_value(small.inputs[1])
    small.inputs[1] = build.const(f"{prefix}/folded_weight", np.take(weight, range(keep), axis))
    if len(small.inputs) > 2:
        bias = _constant_value(small.inputs[2])
        if bias.size > 1:
            small.inputs[2] = build.const(f"{prefix}/folded_bias", bias.reshape(-1)[:keep])
    small_out = small.outputs[0]
    for node in match.restore_nodes:
        node.inputs.clear()
        node.outputs.clear()
    if match.bias_add is not None:
        bias = _constant_value(match.bias_add.inputs[1])
        match.bias_add.inputs[0] = small_out
        match.bias_add.inputs[1] = build.const(
            f"{prefix}/folded_full_bias", np.take(bias, kept, axis=0)
        )
    else:
        small.outputs[0] = match.output
    # 2. Per-channel constants in the region keep the kept channels; shapes there change.
    match.output.shape = None
    for node in region.nodes:
        for i, tensor in enumerate(node.inputs):
            constant = _constant_value(tensor)
            if constant is None or constant.size == 1:
                continue
            if node.op == "BatchNormalization":
                node.inputs[i] = build.const(f"{node.name}/folded_param", constant[kept])
                continue
            full = constant.reshape((1,) * (match.rank - constant.ndim) + constant.shape)
            if full.shape[match.axis] == removed.size:
                node.inputs[i] = build.const(
                    f"{node.name}/folded_operand", np.take(full, kept, axis=match.axis)
                )
        node.outputs[0].shape = None
    # 3. Each consumer drops the removed input channels and absorbs their constant output.
    for (sink, _), contribution in zip(region.sinks, contributions, strict=True):
        _shrink_consumer(build, sink, kept, contribution, match.rank)


def _shrink_consumer(
    build: _Builder, consumer: gs.Node, kept: np.ndarray, contribution: np.ndarray, rank: int
) -> None:
    weight = _constant_value(consumer.inputs[1])
    name = consumer.name
    if consumer.op == "Conv":
        consumer.inputs[1] = build.const(f"{name}/folded_weight", weight[:, kept])
        if np.any(contribution):
            old = _constant_value(consumer.inputs[2]) if len(consumer.inputs) > 2 else None
            new = contribution if old is None else old + contribution
            bias = build.const(f"{name}/folded_bias", new.astype(np.float32))
            if len(consumer.inputs) > 2:
                consumer.inputs[2] = bias
            else:
                consumer.inputs.append(bias)
        return
    if consumer.op == "Gemm":
        trans_b = consumer.attrs.get("transB", 0)
        consumer.inputs[1] = build.const(
            f"{name}/folded_weight", weight[:, kept] if trans_b else weight[kept]
        )
        if np.any(contribution):
            beta = float(consumer.attrs.get("beta", 1.0))
            old = _constant_value(consumer.inputs[2]) if len(consumer.inputs) > 2 else None
            if old is None or beta == 0.0:
                new, consumer.attrs["beta"] = contribution, 1.0
            else:
                new = old + contribution / np.float32(beta)
            c = build.const(f"{name}/folded_c", new.astype(np.float32))
            if len(consumer.inputs) > 2:
                consumer.inputs[2] = c
            else:
                consumer.inputs.append(c)
        return
    consumer.inputs[1] = build.const(f"{name}/folded_weight", weight[kept])
    if np.any(contribution) and rank == 2:
        # A 2-D MatMul becomes a Gemm with C, so a restore of its own still matches later.
        consumer.op = "Gemm"
        consumer.attrs.clear()
        consumer.inputs.append(build.const(f"{name}/folded_c", contribution))
    elif np.any(contribution):
        out = consumer.outputs[0]
        mid = build.var(f"{name}/folded_out")
        consumer.outputs[0] = mid
        bias = build.const(f"{name}/folded_bias", contribution)
        build.node("Add", f"{name}/folded_bias", [mid, bias], out)
