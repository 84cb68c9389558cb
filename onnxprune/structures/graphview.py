"""One model looked up by tensor name, and the reason a structure cannot be one.

Both ways of finding structures — following a producer's channels op by op (``rules.py``,
assembled in ``discover.py``) and matching attention heads (``heads.py``) — read producers,
consumers, constants and shapes the same way, stop with the same :class:`Blocked` reason, and read
Reshape targets the same way (a constant, or a Concat of pieces some of which are computed at run
time from static dimensions, as TorchScript exports build them). Those shared lookups live here,
below both, so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper


class Blocked(Exception):
    """Raised while following a structure: the reason it cannot be one."""


def attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """The value of ``node``'s attribute ``name``, else ``default``."""
    for proto in node.attribute:
        if proto.name == name:
            return helper.get_attribute_value(proto)
    return default


class GraphView:
    """Producers, consumers, constants and shapes of one model, looked up by tensor name."""

    def __init__(self, model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.model = model
        self.shapes = shapes
        self.nodes = {n.name: n for n in model.graph.node}
        self.position = {n.name: i for i, n in enumerate(model.graph.node)}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        for node in model.graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
            for name in node.output:
                self.producer[name] = node
        self.outputs = {o.name for o in model.graph.output}
        inputs = {i.name for i in model.graph.input}
        self.initializers = {t.name: t for t in model.graph.initializer if t.name not in inputs}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer or Constant node), else None."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            value = attr(node, "value")
            if value is not None:
                return numpy_helper.to_array(value)
            for key in ("value_float", "value_floats", "value_int", "value_ints"):
                raw = attr(node, key)
                if raw is not None:
                    return np.asarray(raw)
        return None

    def rank(self, tensor: str) -> int | None:
        shape = self.shapes.get(tensor)
        return None if shape is None else len(shape)


def reads_other_dims_only(graph: GraphView, node: onnx.NodeProto, rank: int, axis: int) -> bool:
    """A ``Shape`` whose every use picks a dimension other than the channel ``axis`` with a
    constant ``Gather`` (TorchScript exports read batch and length this way): removing channels
    does not change what it computes."""
    if node.op_type != "Shape" or attr(node, "start") is not None or \
            attr(node, "end") is not None or node.output[0] in graph.outputs:
        return False
    for use in graph.consumers.get(node.output[0], []):
        index = graph.constant(use.input[1]) if use.op_type == "Gather" else None
        if index is None or index.size != 1 or int(index.reshape(-1)[0]) % rank == axis:
            return False
    return True


def concat_piece(graph: GraphView, reshape: onnx.NodeProto, position: int,
                 what: str = "channel count",
                 ) -> tuple[onnx.NodeProto, int, int, int, tuple[int, ...] | None]:
    """Where entry ``position`` of a Reshape target built by a Concat comes from.

    Returns:
        (the Concat, its input index, the position in that piece, the entry's value, the piece's
        value when it is computed at run time from a static dimension, else None).
    """
    concat = graph.producer.get(reshape.input[1])
    if concat is None or concat.op_type != "Concat":
        raise Blocked(f"Reshape {reshape.name!r} target is computed in an unknown way")
    offset = 0
    for index, piece in enumerate(concat.input):
        piece_shape = graph.shapes.get(piece)
        length = int(piece_shape[0]) if piece_shape else 1
        if offset <= position < offset + length:
            value, known = graph.constant(piece), None
            if value is None:
                value = _static_piece(graph, piece)
                known = None if value is None else tuple(int(v) for v in value.reshape(-1))
            if value is None:
                raise Blocked(f"Reshape {reshape.name!r} takes the {what} at run time")
            return concat, index, position - offset, int(value.reshape(-1)[position - offset]), \
                known
        offset += length
    raise Blocked(f"Reshape {reshape.name!r} target is shorter than its output")


def _static_piece(graph: GraphView, piece: str) -> np.ndarray | None:
    """The value of a run-time shape piece ``Unsqueeze(Gather(Shape(t), i))`` when ``t``'s
    dimension ``i`` is static (None otherwise)."""
    unsqueeze = graph.producer.get(piece)
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze":
        return None
    gather = graph.producer.get(unsqueeze.input[0])
    if gather is None or gather.op_type != "Gather":
        return None
    index = graph.constant(gather.input[1])
    shape_node = graph.producer.get(gather.input[0])
    if index is None or index.size != 1 or shape_node is None or \
            shape_node.op_type != "Shape" or attr(shape_node, "start") is not None:
        return None
    dims = graph.shapes.get(shape_node.input[0])
    if dims is None:
        return None
    dim = dims[int(index.reshape(-1)[0]) % len(dims)]
    return np.array([dim], np.int64) if isinstance(dim, (int, np.integer)) else None
