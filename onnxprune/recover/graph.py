"""An ONNX graph run in torch, its weights addressable by initializer name.

:class:`TorchGraph` evaluates the graph node by node with the op table of
:mod:`onnxprune.recover.ops`. The *tunable* initializers (float weights of Conv, Gemm, MatMul and
the constants of Add/Sub/Mul next to them — see :func:`tunable_initializers`) are
``torch.nn.Parameter`` s; every other constant (shapes, indices, Clip limits, normalization
scales, embedding tables read through Gather) stays fixed. Each parameter
carries a mask: its entries that are exactly zero stay zero, so a pruned layout's zeros, a
structure's removed channels and a restore's zero channel are kept as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from onnxprune.recover.ops import OPS, attributes

PARAMETER_SLOTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1), "Add": (0, 1), "Sub": (0, 1),
    "Mul": (0, 1), "PRelu": (1,),
}
"""Inputs of these ops that are weights (when constant) and so are tuned. Normalization scales
and shifts are not: on MiniLM-L6 one Adam step on the LayerNorm weights alone (relative step
1e-3) raised the loss from 0.98 to 4.7e4, while the same step on the matrices and biases
lowered it (the few huge-activation channels of a BERT residual stream hang on them)."""
PASS_THROUGH = {"Transpose", "Reshape", "Identity", "Unsqueeze", "Squeeze", "Flatten"}
"""Ops a weight may pass through on its way to a slot (the way exporters store weights)."""


def opset_of(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Op types of ``model`` the op table cannot run (non-default domains included)."""
    missing = []
    for node in model.graph.node:
        name = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if (node.domain not in ("", "ai.onnx") or node.op_type not in OPS) \
                and name not in missing:
            missing.append(name)
    return missing


def tunable_initializers(model: onnx.ModelProto) -> list[str]:
    """Float initializers with more than one entry whose every use is a weight slot.

    A use is a weight slot when the initializer (possibly through a chain of layout ops such as
    Transpose) is one of :data:`PARAMETER_SLOTS`' inputs. An initializer also read anywhere else
    (a Concat, a Gather's table, a Reshape's shape) stays fixed: tuning it would change more than
    a weight.
    """
    graph = model.graph
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))
    outputs = {o.name for o in graph.output}

    def only_slots(name: str, depth: int = 0) -> bool:
        uses = consumers.get(name, [])
        if not uses or name in outputs or depth > 4:
            return False
        for node, index in uses:
            if node.op_type in PASS_THROUGH and index == 0:
                if not only_slots(node.output[0], depth + 1):
                    return False
            elif index not in PARAMETER_SLOTS.get(node.op_type, ()):
                return False
        return True

    names = []
    for init in graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and int(np.prod(init.dims)) > 1 \
                and only_slots(init.name):
            names.append(init.name)
    return names


class TorchGraph(torch.nn.Module):
    """``model`` as a torch module: ``forward(feed)`` returns the named outputs.

    Args:
        model: a float32 ONNX model with constant initializers (external data loaded).
        tunable: initializer names to make parameters (default: :func:`tunable_initializers`).

    Raises:
        NotImplementedError: an op is not in the table (see :func:`unsupported_ops`).
    """

    def __init__(self, model: onnx.ModelProto, tunable: Iterable[str] | None = None) -> None:
        super().__init__()
        missing = unsupported_ops(model)
        if missing:
            raise NotImplementedError(f"no torch version of {', '.join(missing)}")
        self.opset = opset_of(model)
        self.nodes = list(model.graph.node)
        self.attrs = [attributes(node) for node in self.nodes]
        self.output_names = [o.name for o in model.graph.output]
        self.input_names = [i.name for i in model.graph.input]
        names = set(tunable_initializers(model) if tunable is None else tunable)
        self.constants: dict[str, torch.Tensor] = {}
        self.params = torch.nn.ParameterDict()
        self.masks: dict[str, torch.Tensor] = {}
        self.param_names: dict[str, str] = {}  # initializer name -> ParameterDict key
        for init in model.graph.initializer:
            value = torch.from_numpy(np.array(numpy_helper.to_array(init)))
            if init.name in names:
                key = f"p{len(self.param_names)}"
                self.param_names[init.name] = key
                self.params[key] = torch.nn.Parameter(value.clone())
                self.masks[init.name] = value != 0
            else:
                self.constants[init.name] = value

    def tensor(self, name: str) -> torch.Tensor:
        key = self.param_names.get(name)
        return self.params[key] if key is not None else self.constants[name]

    def forward(self, feed: Mapping[str, torch.Tensor],
                outputs: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        values: dict[str, torch.Tensor | None] = {"": None}
        values.update(self.constants)
        for name, key in self.param_names.items():
            values[name] = self.params[key]
        values.update(feed)
        for node, attrs in zip(self.nodes, self.attrs, strict=True):
            inputs = [values[name] for name in node.input]
            results = OPS[node.op_type](inputs, attrs, self.opset)
            for name, value in zip(node.output, results, strict=False):
                if name:
                    values[name] = value
        return {name: values[name] for name in (outputs or self.output_names)}

    def apply_masks(self) -> None:
        """Zero every masked entry again (after an optimizer step)."""
        with torch.no_grad():
            for name, key in self.param_names.items():
                self.params[key].mul_(self.masks[name])

    def tuned_values(self) -> dict[str, np.ndarray]:
        """The current value of every parameter, by initializer name, as float32 numpy."""
        return {name: (self.params[key].detach() * self.masks[name]).numpy().astype(np.float32)
                for name, key in self.param_names.items()}


def with_initializers(model: onnx.ModelProto, values: Mapping[str, np.ndarray]
                      ) -> onnx.ModelProto:
    """A copy of ``model`` whose named initializers hold ``values`` (same names, shapes, dtypes):
    nothing else of the graph changes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in values:
            value = values[init.name]
            if tuple(value.shape) != tuple(init.dims):
                raise ValueError(f"{init.name}: shape {value.shape} is not {tuple(init.dims)}")
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), init.name))
    return out


def to_torch_feed(feed: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in feed.items()}
