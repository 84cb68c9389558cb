"""The dense layout: the node as it is. Always available, it is the allocator's baseline."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from onnxprune.layouts.base import ALL_PROVIDERS, DEFAULT_LEVELS, DENSE, LayoutOption, PrunedWeight

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from onnxprune.graph.candidates import Candidate
    from onnxprune.reconstruct.obs import ObsSolver

logger = logging.getLogger("onnxprune")


class Dense:
    """Keep the weight unchanged. ``fast_on`` is every EP because dense is always on the menu."""

    name: ClassVar[str] = "dense"
    fast_on: ClassVar[frozenset[str]] = ALL_PROVIDERS

    def options(
        self, candidate: Candidate, levels: Iterable[float] = DEFAULT_LEVELS
    ) -> tuple[list[LayoutOption], str | None]:
        """The single option :data:`~onnxprune.layouts.base.DENSE` (``levels`` is ignored)."""
        return [DENSE], None

    @staticmethod
    def label(option: LayoutOption) -> str:
        return "dense"

    @staticmethod
    def granularity(option: LayoutOption) -> int:
        return 1

    def solve(self, candidate: Candidate, solver: ObsSolver, option: LayoutOption) -> PrunedWeight:
        """The original weight, all kept, error 0 (the solver is not used)."""
        mask = np.ones(candidate.weight.shape, dtype=bool)
        return PrunedWeight(option, mask, candidate.weight, 0.0)

    def materialize(self, graph: gs.Graph, candidate: Candidate, pruned: PrunedWeight) -> None:
        """Nothing to do: the graph already computes the dense node."""
