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

The whole-graph pass that later removes the restores :func:`channel_restore` leaves, where the next
consumer can shrink instead, is :mod:`onnxprune.graph.fold_restores`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graph.candidates import Candidate, NodeSite

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
