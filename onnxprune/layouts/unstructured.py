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
from onnxprune.layouts.base import (
    DEFAULT_LEVELS,
    LayoutOption,
    PrunedWeight,
    as_matrix,
    pruned_weight,
    top_k_mask,
)

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

    @staticmethod
    def label(option: LayoutOption) -> str:
        return f"unstructured {option.level:.0%}"

    @staticmethod
    def granularity(option: LayoutOption) -> int:
        return 1

    def solve(self, candidate: Candidate, solver: ObsSolver, option: LayoutOption) -> PrunedWeight:
        """SparseGPT: the mask is picked per lazy block from the already-updated weights, so
        later columns' choices account for the compensation they received."""
        level = option.level
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"sparsity must be in [0, 1], got {level}")
        solution = solver.prune(lambda S: unstructured_mask(S, level), window=solver.blocksize)
        return pruned_weight(candidate, option, solution)

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


def unstructured_mask(S: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep the top ``1 - sparsity`` fraction of all entries of ``S``.

    The solver applies this per lazy column block (SparseGPT's adaptive mask selection: each block's
    mask is chosen from weights already updated by the earlier blocks), so ``S`` may be a column
    window rather than the whole layer; the picker itself does not care. The number removed is
    ``round(S.size · sparsity)``, exact, so per-window rounding stays below one weight per window.

    Args:
        S: [N, K'] saliency (K' = K or a column window of it).
        sparsity: fraction of entries to remove, in [0, 1].

    Returns:
        Bool [N, K'] keep mask.
    """
    S = as_matrix(S)
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    n_prune = int(round(S.size * sparsity))
    keep_flat = top_k_mask(S.reshape(-1), S.size - n_prune)
    return keep_flat.reshape(S.shape)
