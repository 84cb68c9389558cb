"""Folding channel restores into the next consumer: the pass after a channel layout's rewrite.

:func:`~onnxprune.graph.rewrite.channel_restore` writes a channel-pruned node as a smaller node
plus a Gather that restores the full channel count, which is exact whatever reads the output. When
what reads it is only a region of elementwise ops ending in MatMul / Gemm / Conv consumers with
constant weights, the restore can go: the consumers lose the removed input channels instead, and
the constant those channels carried is folded into their bias (:func:`fold_channel_restores`).

This is separate from :mod:`onnxprune.graph.rewrite` because it is a different job: the rewrites
write one candidate's pruned weight into the graph; this pass runs once over the whole graph after
every candidate is materialized, matches the restores those rewrites left, and evaluates the region
between each restore and its consumers. It is not :mod:`onnxprune.graph.fold` either, which folds
pinned graph inputs (``--fix``) and the ``If`` branches they decide, before any analysis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs
import scipy.special

from onnxprune.graph.rewrite import _Builder

logger = logging.getLogger("onnxprune")

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
    """A matched :func:`~onnxprune.graph.rewrite.channel_restore` subgraph.

    See :func:`fold_channel_restores`.

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

    A restore built by :func:`~onnxprune.graph.rewrite.channel_restore` is folded when everything
    between it and the next MatMul / Gemm / Conv consumers (constant weight, reading the path as
    their activation) is a region of elementwise ops: Add/Sub/Mul/Div/Pow with scalar or
    per-channel constants or with each other (so a GELU exported as Div/Erf/Add/Mul/Mul
    qualifies), Relu, LeakyRelu, Sigmoid, Tanh, Neg, Abs, Exp, Erf, Identity, and
    BatchNormalization after a Conv. The restore is then removed: the producer keeps its ``keep``
    channels, per-channel constants in the region are gathered, every consumer's weight loses the
    removed input channels, and the constant those channels carried (``f(bias)``, evaluated
    through the region) is folded into the consumer's bias. A padded Conv consumer accepts this
    only when that constant is 0 (padding makes its contribution position-dependent). Residual
    Adds with other tensors, Concats, graph outputs and any other op keep the plain restore, which
    is always exact.

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
