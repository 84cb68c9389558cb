"""The model every stage analyses, prepared once the same way by ``prune``, ``profile`` and
``inspect``: pinned inputs folded (``--fix``), node names made unique, the IR version stamped for
the installed ONNX Runtime, and half precision widened to a float32 twin.

Keeping this in one place is what makes ``inspect`` and ``profile`` show the nodes and times
``prune`` then works with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx

from onnxprune.graph.candidates import ensure_node_names
from onnxprune.graph.fold import FixResult, apply_fixes
from onnxprune.graph.load import stamp_ir_version
from onnxprune.graph.precision import LowPrecision, widen


@dataclass(frozen=True)
class Prepared:
    """A loaded model, ready for analysis.

    Attributes:
        original: the input with its pins folded, unique node names and a readable IR version:
            the dense reference every speed and fidelity comparison is made against.
        model: what the stages analyse, solve and rewrite: ``original``, or its float32 twin
            when it is in half precision (see :mod:`onnxprune.graph.precision`).
        precision: the half-precision type, or None for float32 models.
        fixed: what ``--fix`` folded and removed (for the report).
    """

    original: onnx.ModelProto
    model: onnx.ModelProto
    precision: LowPrecision | None
    fixed: FixResult


def prepare_model(model: onnx.ModelProto, fix: Mapping[str, object] | None = None) -> Prepared:
    """Fold the pins, name the nodes, stamp the IR version and widen half precision."""
    fixed = apply_fixes(model, dict(fix or {}))
    original = stamp_ir_version(ensure_node_names(fixed.model))
    analysed, precision = widen(original)
    return Prepared(original, analysed, precision, fixed)
