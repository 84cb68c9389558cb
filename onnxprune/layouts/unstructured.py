"""The unstructured layout: any weights removed, kept in a dense node (masked dense).

Stock ONNX Runtime does not skip zeros, so this layout gives no speedup on any EP it ships with;
it is chosen only when the user forces it (compression, or a runtime with sparse kernels). With
``sparse_storage`` the pruned weight is written as an ONNX ``sparse_initializer`` (COO, linear
int64 indices), which makes the file smaller; ORT densifies it when the session loads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import SparseValues

from onnxprune.graph import rewrite
from onnxprune.layouts.base import DEFAULT_LEVELS, LayoutOption, PrunedWeight, from_rows

if TYPE_CHECKING:
    from onnxprune.graph.candidates import Candidate
    from onnxprune.reconstruct.obs import ObsSolver

logger = logging.getLogger("onnxprune")


class Unstructured:
    """Unstructured sparsity at any level, materialized as masked dense.

    Args:
        sparse_storage: write the pruned weight as a ``sparse_initializer`` (smaller file; same
            speed, ORT densifies on load).
    """

    name: ClassVar[str] = "unstructured"
    fast_on: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, sparse_storage: bool = False) -> None:
        self.sparse_storage = sparse_storage

    def options(
        self, candidate: Candidate, levels: Iterable[float] = DEFAULT_LEVELS
    ) -> tuple[list[LayoutOption], str | None]:
        """One option per level in (0, 1)."""
        options = [LayoutOption(self.name, float(level)) for level in levels if 0 < level < 1]
        if not options:
            return [], "no level in (0, 1) given"
        return options, None

    def solve(self, candidate: Candidate, solver: ObsSolver, option: LayoutOption) -> PrunedWeight:
        """SparseGPT mask (picked per lazy block) and update (``solver.solve_unstructured``)."""
        solution = solver.solve_unstructured(option.level)
        return PrunedWeight(
            option,
            from_rows(candidate, solution.mask),
            from_rows(candidate, solution.weight),
            float(solution.err),
        )

    def materialize(self, graph: gs.Graph, candidate: Candidate, pruned: PrunedWeight) -> None:
        """Masked dense; with ``sparse_storage`` the weight becomes a sparse initializer."""
        if not self.sparse_storage:
            rewrite.replace_weight(graph, candidate, pruned.weight)
            return
        taken = set(graph.tensors().keys())
        name, counter = f"{candidate.name}/pruned_weight", 0
        while name in taken:
            counter += 1
            name = f"{candidate.name}/pruned_weight_{counter}"
        constant = gs.Constant(name, SparseValues(sparse_tensor(pruned.weight, name)))
        rewrite.replace_weight_tensor(graph, candidate, constant)


def sparse_tensor(weight: np.ndarray, name: str) -> onnx.SparseTensorProto:
    """COO ``SparseTensorProto`` of ``weight`` with linearized int64 indices [nnz]."""
    flat = np.asarray(weight, dtype=np.float32).reshape(-1)
    positions = np.flatnonzero(flat).astype(np.int64)
    values = numpy_helper.from_array(flat[positions], name)
    indices = numpy_helper.from_array(positions, f"{name}_indices")
    return onnx.helper.make_sparse_tensor(values, indices, list(weight.shape))
