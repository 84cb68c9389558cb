"""Pinning graph inputs to constants (``--fix NAME=VALUE``) and folding the ``If``s they decide.

Exports that switch on a small input (a sample rate, a mode flag) hide their weights inside ``If``
branches, where nothing is pruned (see :mod:`onnxprune.graph.subgraphs`). Once the user pins that
input, the condition is a constant: the nodes computed only from constants that lead there are
evaluated once with ONNX Runtime (never stricter than the runtime the model is deployed on), and
each ``If`` whose condition is now constant is replaced by the branch it takes
(:func:`~onnxprune.graph.inline.inline_branch`). Its weights then sit in the main graph and are
ordinary candidates. An ``If`` whose condition was constant to begin with is folded too: the result
is exact either way.

The pinned input is **removed** from the written model. Keeping it as an unused input would make
ONNX Runtime still require a feed for it and silently ignore a different value; removed, a stale
feed fails loudly (``Invalid input name``) instead of computing the wrong branch.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.common.errors import UserError
from onnxprune.graph.inline import inline_branch, subgraph_attrs

logger = logging.getLogger("onnxprune")

MAX_FOLDED_ELEMENTS = 1 << 20
"""Folded tensors above this size stay computed at run time (folding them only bloats the file)."""
MAX_ROUNDS = 16
_NON_DETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                      "Multinomial", "Bernoulli"}


@dataclass(frozen=True)
class FoldedIf:
    """One ``If`` replaced by the branch its constant condition takes."""

    node: str
    branch: str
    nodes_inlined: int


@dataclass(frozen=True)
class FixResult:
    """The model with the inputs pinned and the decided ``If`` nodes folded.

    Attributes:
        model: the rewritten model (the input model itself when nothing changed).
        pinned: the pinned inputs and their values (removed from the model's inputs).
        folded: the ``If`` nodes replaced by their taken branch.
        notes: what the user must know, one sentence each (the removed inputs, the folds).
    """

    model: onnx.ModelProto
    pinned: Mapping[str, np.ndarray]
    folded: tuple[FoldedIf, ...]
    notes: tuple[str, ...]

    def to_json(self) -> dict:
        return {
            "pinned": {k: v.tolist() for k, v in self.pinned.items()},
            "removed_inputs": list(self.pinned),
            "folded_ifs": [{"node": f.node, "branch": f.branch, "nodes_inlined": f.nodes_inlined}
                           for f in self.folded],
            "notes": list(self.notes),
        }


def parse_fix_specs(specs: Iterable[str]) -> dict[str, str]:
    """Parse ``--fix NAME=VALUE`` options into ``{name: value text}`` (values are parsed against
    the input's declared type later, by :func:`apply_fixes`).

    Raises:
        UserError: a spec is not ``NAME=VALUE`` or a name repeats.
    """
    fixes: dict[str, str] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name = name.strip()
        if not sep or not name or not value.strip():
            raise UserError(f"bad --fix {spec!r}: expected NAME=VALUE, e.g. sample_rate=16000 "
                            "(VALUE a number or a comma-separated list)")
        if name in fixes:
            raise UserError(f"--fix given twice for input {name!r}")
        fixes[name] = value.strip()
    return fixes


def _real_inputs(graph: onnx.GraphProto) -> dict[str, onnx.ValueInfoProto]:
    inits = {t.name for t in graph.initializer}
    return {i.name: i for i in graph.input if i.name not in inits}


def _describe(info: onnx.ValueInfoProto) -> str:
    tensor_type = info.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name \
        if tensor_type.elem_type else "untyped"
    if not tensor_type.HasField("shape"):
        return f"{dtype}, shape unknown"
    dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
            for d in tensor_type.shape.dim]
    return f"{dtype}[{', '.join(dims)}]"


def pinned_value(name: str, value: object, info: onnx.ValueInfoProto) -> np.ndarray:
    """The value of ``--fix name=value`` as an array of the input's declared dtype and shape.

    ``value`` is text (``16000``, ``1,2,3``, ``true``) or anything :func:`numpy.asarray` takes.

    Raises:
        UserError: the value does not parse as the input's dtype or does not fit its shape.
    """
    elem_type = info.type.tensor_type.elem_type
    bad = f"bad --fix {name}={value!r}"
    if elem_type in (0, onnx.TensorProto.STRING) or not info.type.HasField("tensor_type"):
        raise UserError(f"{bad}: input {name!r} ({_describe(info)}) is not a numeric tensor; "
                        "only numeric and bool inputs can be pinned")
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    try:
        raw = _values(value, dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise UserError(f"{bad}: {exc}; input {name!r} is {_describe(info)}") from None
    if raw.size == 0:
        raise UserError(f"{bad}: no value given; input {name!r} is {_describe(info)}")
    shape = _fit_shape(info, raw.size)
    if shape is None:
        raise UserError(f"{bad}: {raw.size} value(s) do not fit input {name!r} "
                        f"({_describe(info)})")
    return raw.reshape(shape)


def _values(value: object, dtype: np.dtype) -> np.ndarray:
    """Parse ``value`` to a flat array of ``dtype``, refusing lossy conversions."""
    if isinstance(value, str):
        items: list[object] = [v.strip() for v in value.split(",")]
        if any(not v for v in items):
            raise ValueError("empty item in the comma-separated list")
    else:
        items = list(np.asarray(value).reshape(-1))
    out = []
    for item in items:
        if dtype == np.bool_:
            text = str(item).strip().lower()
            if text not in ("true", "false", "1", "0"):
                raise ValueError(f"{item!r} is not a bool (true/false/1/0)")
            out.append(text in ("true", "1"))
        elif np.issubdtype(dtype, np.integer):
            number = float(item)
            if not number.is_integer():
                raise ValueError(f"{item!r} is not an integer")
            info = np.iinfo(dtype)
            if not info.min <= number <= info.max:
                raise ValueError(f"{item!r} is out of range for {dtype.name}")
            out.append(int(number))
        else:
            number = float(item)
            if not np.isfinite(number):
                raise ValueError(f"{item!r} is not a finite number")
            out.append(number)
    return np.array(out, dtype=dtype)


def _fit_shape(info: onnx.ValueInfoProto, count: int) -> tuple[int, ...] | None:
    """The declared shape with its dynamic dims sized so it holds ``count`` values."""
    tensor_type = info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return () if count == 1 else (count,)
    fixed = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
             for d in tensor_type.shape.dim]
    known = int(np.prod([d for d in fixed if d is not None])) if fixed else 1
    dynamic = [i for i, d in enumerate(fixed) if d is None]
    if not dynamic:
        return tuple(fixed) if known == count else None  # type: ignore[arg-type]
    if count % known:
        return None
    # One dynamic dim takes what the fixed ones leave; several must all be 1.
    rest = count // known
    shape = [d if d is not None else 1 for d in fixed]
    if len(dynamic) == 1:
        shape[dynamic[0]] = rest
    elif rest != 1:
        return None
    return tuple(shape)


def apply_fixes(model: onnx.ModelProto, fixes: Mapping[str, object] | None = None) -> FixResult:
    """Pin ``fixes`` (input name -> value) as constants and fold every ``If`` that decides.

    The input model is never changed: a copy is rewritten when there is anything to do (a pin,
    or an ``If`` in the main graph); otherwise ``model`` itself comes back.

    Raises:
        UserError: a name is not an input of the model, or its value does not fit it.
    """
    fixes = dict(fixes or {})
    inputs = _real_inputs(model.graph)
    for name in fixes:
        if name not in inputs:
            raise UserError(f"--fix names {name!r}, which is not an input of the model; inputs: "
                            + ", ".join(inputs))
    pinned = {name: pinned_value(name, value, inputs[name]) for name, value in fixes.items()}
    if not pinned and not any(n.op_type == "If" for n in model.graph.node):
        return FixResult(model, {}, (), ())
    model = copy.deepcopy(model)
    graph = model.graph
    for name, value in pinned.items():
        graph.input.remove(next(i for i in graph.input if i.name == name))
        graph.initializer.append(numpy_helper.from_array(value, name))
    folded: list[FoldedIf] = []
    notes: list[str] = []
    for _ in range(MAX_ROUNDS):
        evaluated, failure = _fold_constants(model, set(pinned))
        if failure:
            notes.append(failure)
        inlined = _inline_constant_ifs(model)
        folded.extend(inlined)
        if not evaluated and not inlined:
            break
    if folded or pinned:
        _sweep(graph)
    for name, value in pinned.items():
        text = ",".join(str(v) for v in value.reshape(-1).tolist())
        notes.append(f"--fix {name}={text}: input {name!r} is pinned and removed from the "
                     f"written model; drop it from your feeds")
    for fold in folded:
        notes.append(f"If node {fold.node!r} folded (its condition is constant): the "
                     f"{fold.nodes_inlined} node(s) of its {fold.branch} branch now run in the "
                     "main graph, where their weights can be pruned")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:  # a bug here, never the user's mistake
        raise RuntimeError(f"folding the pinned inputs made an invalid model: {exc}") from exc
    except ValueError:  # over protobuf's 2 GiB: the checker needs a file; ORT checks on load
        logger.debug("model too large to check in memory after folding")
    notes = list(dict.fromkeys(notes))  # a failure repeats once per round
    for note in notes:
        logger.info(note)
    return FixResult(model, pinned, tuple(folded), tuple(notes))


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    inputs = {i.name for i in graph.input}
    names = {t.name for t in graph.initializer if t.name not in inputs}
    names.update(n.output[0] for n in graph.node if n.op_type == "Constant" and n.output)
    return names


def _foldable(node: onnx.NodeProto, constants: set[str]) -> bool:
    return (node.domain in ("", "ai.onnx") and node.op_type != "Constant"
            and node.op_type not in _NON_DETERMINISTIC and not subgraph_attrs(node)
            and any(node.input) and all(i in constants for i in node.input if i))


def _condition_cones(graph: onnx.GraphProto) -> set[str]:
    """Tensors an ``If`` condition is computed from (the tensors worth folding without a pin)."""
    producers = {out: node for node in graph.node for out in node.output}
    cone: set[str] = set()
    stack = [n.input[0] for n in graph.node if n.op_type == "If" and n.input]
    while stack:
        name = stack.pop()
        if name in cone:
            continue
        cone.add(name)
        node = producers.get(name)
        if node is not None and not subgraph_attrs(node):
            stack.extend(i for i in node.input if i)
    return cone


def _fold_constants(model: onnx.ModelProto, pinned: set[str]) -> tuple[int, str | None]:
    """Evaluate the nodes computed only from constants that depend on a pinned input or lead to an
    ``If`` condition; replace their outputs by initializers. Returns (nodes folded, failure)."""
    graph = model.graph
    constants = _constant_names(graph)
    cone = _condition_cones(graph)
    tainted = set(pinned)
    chosen: list[onnx.NodeProto] = []
    for node in graph.node:
        relevant = any(i in tainted for i in node.input) or any(o in cone for o in node.output)
        if relevant:
            tainted.update(node.output)
        if relevant and _foldable(node, constants):
            chosen.append(node)
            constants.update(o for o in node.output if o)
    if not chosen:
        return 0, None
    graph_outputs = {o.name for o in graph.output}
    wanted = [o for node in chosen for o in node.output if o and o not in graph_outputs]
    if not wanted:
        return 0, None
    try:
        values = _evaluate(model, chosen, wanted)
    except Exception as exc:  # noqa: BLE001 - ORT raises many types; the If stays, with a reason
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return 0, f"constant folding failed, so nothing was folded: {first}"
    replaced = {n: v for n, v in values.items() if v.size <= MAX_FOLDED_ELEMENTS}
    gone = {id(n) for n in chosen if all(not o or o in replaced for o in n.output)}
    keep = [n for n in graph.node if id(n) not in gone]
    folded = len(graph.node) - len(keep)
    del graph.node[:]
    graph.node.extend(keep)
    for name, value in replaced.items():
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return folded, None


def _evaluate(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto],
              wanted: Sequence[str]) -> dict[str, np.ndarray]:
    """Run ``nodes`` (all their inputs constant) in one small ORT session."""
    import onnxruntime as ort

    from onnxprune.graph.load import ort_max_ir_version

    graph = model.graph
    inputs = {i for n in nodes for i in n.input if i}
    produced = {o for n in nodes for o in n.output}
    constant_nodes = [n for n in graph.node if n.op_type == "Constant"
                      and n.output and n.output[0] in inputs]
    initializers = [t for t in graph.initializer if t.name in inputs and t.name not in produced]
    small = helper.make_graph(
        [*constant_nodes, *nodes], "fold", [], [helper.make_empty_tensor_value_info(w)
                                                for w in wanted], initializers,
    )
    proto = helper.make_model(small, opset_imports=list(model.opset_import))
    proto.ir_version = min(model.ir_version, ort_max_ir_version())
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(wanted, session.run(list(wanted), {}), strict=True))


def _inline_constant_ifs(model: onnx.ModelProto) -> list[FoldedIf]:
    """Replace every main-graph ``If`` whose condition is a one-element constant by its branch."""
    graph = model.graph
    done: list[FoldedIf] = []
    while True:
        inputs = {i.name for i in graph.input}
        values = {t.name: t for t in graph.initializer if t.name not in inputs}
        constant_nodes = {n.output[0]: n for n in graph.node
                          if n.op_type == "Constant" and n.output}
        found = None
        for index, node in enumerate(graph.node):
            cond = _constant_condition(node, values, constant_nodes)
            if cond is None:
                continue
            branch = "then" if cond else "else"
            taken = next((a.g for a in node.attribute if a.name == f"{branch}_branch"), None)
            if taken is not None and not taken.input and not taken.sparse_initializer:
                found = index, branch
                break
        if found is None:
            return done
        index, branch = found
        nodes = [_copy(n) for n in graph.node]
        if_node = nodes[index]
        taken = next(a.g for a in if_node.attribute if a.name == f"{branch}_branch")
        del graph.node[:]
        graph.node.extend(nodes[:index] + nodes[index + 1:])  # the If out, so its names are free
        new_nodes = inline_branch(model, if_node, taken, prefix=f"{if_node.name or 'If'}.{branch}")
        del graph.node[:]
        graph.node.extend(nodes[:index] + new_nodes + nodes[index + 1:])
        done.append(FoldedIf(if_node.name, branch, len(new_nodes)))


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copied = onnx.NodeProto()
    copied.CopyFrom(node)
    return copied


def _constant_condition(node: onnx.NodeProto, values: Mapping[str, onnx.TensorProto],
                        constant_nodes: Mapping[str, onnx.NodeProto]) -> bool | None:
    if node.op_type != "If" or node.domain not in ("", "ai.onnx") or not node.input:
        return None
    name = node.input[0]
    if name in values:
        value = numpy_helper.to_array(values[name])
    elif name in constant_nodes:
        attr = next((a for a in constant_nodes[name].attribute if a.name == "value"), None)
        if attr is None:
            return None
        value = numpy_helper.to_array(attr.t)
    else:
        return None
    return bool(value.reshape(-1)[0]) if value.size == 1 else None


def _used_names(graph: onnx.GraphProto, into: set[str]) -> set[str]:
    """Every tensor name read by a node of ``graph`` or its subgraphs, or output by ``graph``."""
    for node in graph.node:
        into.update(i for i in node.input if i)
        for sub in subgraph_attrs(node):
            _used_names(sub, into)
            into.update(o.name for o in sub.output)
    return into


def _sweep(graph: onnx.GraphProto) -> None:
    """Drop main-graph nodes, initializers and value_infos that nothing reads any more."""
    outputs = {o.name for o in graph.output}
    while True:
        used = _used_names(graph, set(outputs))
        keep = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = _used_names(graph, set(outputs)) | {i.name for i in graph.input}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    present = used | {o for n in graph.node for o in n.output}
    infos = [v for v in graph.value_info if v.name in present]
    del graph.value_info[:]
    graph.value_info.extend(infos)
