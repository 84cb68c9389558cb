"""The N:M layout: ``n`` of every ``m`` consecutive weights along the reduction dim are kept.

Stock ONNX has no N:M operator, so the model keeps the dense node with the pruned weight (masked
dense). It runs faster only where the runtime exploits the pattern (TensorRT with sparsity enabled
on Ampere+ GPUs); on the CPU EP it gives compression at best, and the report must say so.

Conv: TensorRT wants the groups along input channels, while the solver's columns run over
(channel, tap) pairs, so N:M is offered for 1x1 Convs only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np

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
    import onnx_graphsurgeon as gs

    from onnxprune.graph.candidates import Candidate
    from onnxprune.reconstruct.obs import ObsSolver

logger = logging.getLogger("onnxprune")

DEFAULT_PATTERNS: tuple[tuple[int, int], ...] = ((2, 4), (1, 4), (4, 8))


class NM:
    """N:M semi-structured sparsity (kept ``n`` of ``m``), materialized as masked dense.

    Args:
        patterns: (n, m) pairs offered, n = weights KEPT per group of m.
    """

    name: ClassVar[str] = "nm"
    fast_on: ClassVar[frozenset[str]] = frozenset({"TensorrtExecutionProvider"})

    def __init__(self, patterns: Sequence[tuple[int, int]] = DEFAULT_PATTERNS) -> None:
        for n, m in patterns:
            if not 1 <= n < m:
                raise ValueError(f"N:M pattern {n}:{m} needs 1 <= n < m")
        self.patterns = tuple(patterns)

    def options(
        self, candidate: Candidate, levels: Iterable[float] = DEFAULT_LEVELS
    ) -> tuple[list[LayoutOption], str | None]:
        """One option per pattern whose ``m`` divides K; level ``1 − n/m``.

        ``levels`` is ignored: the patterns fix the levels.
        """
        if candidate.op == "Conv" and candidate.weight.shape[2:] != (1, 1):
            return [], "N:M is offered for 1x1 convs only (TensorRT groups along input channels)"
        k_dim = candidate.reduction_dim
        options = [
            LayoutOption(self.name, 1.0 - n / m, (("m", m), ("n", n)))
            for n, m in self.patterns
            if k_dim % m == 0
        ]
        if not options:
            ms = sorted({m for _, m in self.patterns})
            return [], f"reduction dim K={k_dim} is not a multiple of any M in {ms}"
        return options, None

    @staticmethod
    def label(option: LayoutOption) -> str:
        return f"nm {option.param('n')}:{option.param('m')} {option.level:.0%}"

    @staticmethod
    def granularity(option: LayoutOption) -> int:
        return 1

    def solve(self, candidate: Candidate, solver: ObsSolver, option: LayoutOption) -> PrunedWeight:
        """N:M mask picked group by group during the OBS sweep (window = m)."""
        n, m = option.param("n"), option.param("m")
        if m < 1 or not 1 <= n <= m or solver.columns % m:
            raise ValueError(f"N:M {n}:{m} does not fit K={solver.columns} (need 1<=n<=m, m | K)")
        return pruned_weight(candidate, option, solver.prune(lambda S: nm_mask(S, n, m),
                                                             window=m))

    def materialize(self, graph: gs.Graph, candidate: Candidate, pruned: PrunedWeight) -> None:
        """Masked dense: the nodes read the pruned weight."""
        rewrite.replace_weight(graph, candidate, pruned.weight)


def nm_mask(S: np.ndarray, n: int, m: int) -> np.ndarray:
    """N:M mask: keep the ``n`` largest of every ``m`` consecutive weights along the reduction dim.

    ``n`` counts KEPT weights: 2:4 keeps 2 of 4 (50 % sparse), 1:4 keeps 1 of 4 (75 % sparse). The
    groups run along columns (the reduction dimension) because that is what sparse tensor cores
    require.

    Args:
        S: [N, K'] saliency; ``K'`` must be a multiple of ``m``.
        n: weights kept per group, 1 <= n <= m.
        m: group length.

    Returns:
        Bool [N, K'] keep mask with exactly ``n`` True per group.

    Raises:
        ValueError: ``K'`` is not a multiple of ``m`` or ``n``/``m`` are out of range.
    """
    S = as_matrix(S)
    if m < 1 or not 1 <= n <= m:
        raise ValueError(f"N:M needs 1 <= n <= m, got n={n}, m={m}")
    rows, cols = S.shape
    if cols % m:
        raise ValueError(f"N:M {n}:{m} needs the reduction dim ({cols}) to be a multiple of {m}")
    groups = S.reshape(rows, cols // m, m)
    return top_k_mask(groups, n).reshape(rows, cols)


def check_nm(mask: np.ndarray, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive columns keeps at most ``n`` weights.

    "At most" is the hardware contract (a group may hold more zeros than required).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or m < 1 or mask.shape[1] % m:
        return False
    kept = mask.reshape(mask.shape[0], -1, m).sum(axis=-1)
    return bool(np.all(kept <= n))
