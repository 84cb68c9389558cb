"""The common interface of all weight layouts.

A layout is a family of masks (block, channel, N:M, unstructured) plus the way a weight masked in
that family is written back into the graph. Splitting the work into four questions keeps every
layout testable alone and lets the pipeline treat them uniformly:

1. :meth:`Layout.options` — which (shape, level) variants does this node admit? An empty list comes
   with a reason (ORT quantization's ``should_quantize`` split: asking is separate from doing).
2. :meth:`Layout.solve` — choose the mask and the reconstructed weight for one option, given the
   layer's OBS solver (calibration Hessian, or the identity for the data-free magnitude proxy).
   A layout owns its mask picker and hands it to the solver's generic seam
   (:meth:`~onnxprune.reconstruct.obs.ObsSolver.prune`); the solver knows no layout.
3. :meth:`Layout.materialize` — rewrite the candidate's node(s) in an onnx-graphsurgeon graph into
   standard ONNX ops computing exactly ``X·W_masked (+ bias)``.
4. ``fast_on`` — the execution providers on which the materialized form is genuinely faster, so
   the allocator is only offered options that can pay off there; ``label`` and ``granularity``
   describe an option to the report and the allocator.

A layout is one module plus one line in :mod:`onnxprune.layouts.registry`.

Weights are always in the candidate's canonical orientation (MatMul/Gemm W[K, N] with
``Y = X·W + bias``; Conv W[O, C, kh, kw]). The OBS kernels work on [outputs, reduction]; the
conversion lives in :func:`to_rows` / :func:`from_rows` only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from onnxprune.graph.candidates import Candidate
    from onnxprune.reconstruct.obs import ObsSolver

ALL_PROVIDERS = frozenset({"*"})

# Fractions of weights removed that the layouts offer by default. The latency table decides which
# of them are worth anything on the EP; the DP picks among those.
DEFAULT_LEVELS: tuple[float, ...] = (0.25, 0.375, 0.5, 0.625, 0.75, 0.8125, 0.875, 0.9375)


@dataclass(frozen=True)
class LayoutOption:
    """One (layout, shape, level) variant a candidate can take.

    Attributes:
        layout: layout name ("dense", "block", "channel", "nm", "unstructured").
        level: fraction of the weight's entries removed (0.0 for dense).
        params: the layout's parameters as sorted (name, value) pairs so options are hashable and
            JSON-friendly, e.g. (("bk", 64), ("bn", 64), ("keep", 3)) for block.
    """

    layout: str
    level: float
    params: tuple[tuple[str, int], ...] = ()

    def param(self, name: str) -> int:
        return dict(self.params)[name]

    def to_json(self) -> dict:
        return {"layout": self.layout, "level": self.level, "params": dict(self.params)}

    @staticmethod
    def from_json(data: dict) -> LayoutOption:
        return LayoutOption(
            data["layout"], float(data["level"]), tuple(sorted(data.get("params", {}).items()))
        )


DENSE = LayoutOption("dense", 0.0)


@dataclass(frozen=True, eq=False)
class PrunedWeight:
    """A solved option: the kept entries and the (reconstructed) weight, canonical orientation.

    Attributes:
        option: the option solved.
        mask: bool, the candidate's canonical weight shape; True = kept.
        weight: float32, same shape; exactly zero where ``mask`` is False.
        err: normalized layer error ‖ŴX − WX‖² / ‖WX‖² (data-free: share of weight energy removed).
    """

    option: LayoutOption
    mask: np.ndarray
    weight: np.ndarray
    err: float
    companions: tuple[Companion, ...] = ()
    """The other consumers of a coupled channel group decided at this candidate: the same
    channels go from each of them, each with its own reconstructed weight. Their own database
    entries stay dense (they have no option of their own); :func:`solution_weights` is how
    every stage that evaluates or writes an allocation sees them."""
    err_energy: float | None = None
    """The held-out error weighted by output energy, ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` (None when
    not measured): the allocation search may rank by it instead of ``err``
    (:mod:`onnxprune.solve.database`)."""


@dataclass(frozen=True, eq=False)
class Companion:
    """A group consumer's part of the solution decided at another candidate (same fields)."""

    name: str
    mask: np.ndarray
    weight: np.ndarray
    err: float


def solution_weights(chosen: Mapping[str, PrunedWeight]) -> dict[str, np.ndarray]:
    """The canonical weight of every candidate an allocation changes, companions included."""
    weights = {name: solution.weight for name, solution in chosen.items()}
    for solution in chosen.values():
        for companion in solution.companions:
            weights[companion.name] = companion.weight
    return weights


class Layout(Protocol):
    """What every layout module provides (see the module docstring)."""

    name: ClassVar[str]
    fast_on: ClassVar[frozenset[str]]

    @staticmethod
    def label(option: LayoutOption) -> str:
        """Short human label of one of this layout's options (CLI, report, JSON)."""
        ...

    @staticmethod
    def granularity(option: LayoutOption) -> int:
        """Entries kept or removed together (coarser = faster, usually less accurate); the
        allocator drops an option dominated by a faster, lighter one that is no coarser."""
        ...

    def options(
        self, candidate: Candidate, levels: Iterable[float] = DEFAULT_LEVELS
    ) -> tuple[list[LayoutOption], str | None]:
        """Options this candidate admits, or ([], reason) when the layout cannot apply."""
        ...

    def solve(
        self, candidate: Candidate, solver: ObsSolver, option: LayoutOption
    ) -> PrunedWeight:
        """Mask and reconstructed weight for ``option`` using the layer's OBS solver."""
        ...

    def materialize(
        self, graph: gs.Graph, candidate: Candidate, pruned: PrunedWeight
    ) -> None:
        """Rewrite every node of ``candidate`` in ``graph`` to compute ``X·pruned.weight + bias``.

        Must keep dynamic dimensions (batch, sequence) working and leave other nodes untouched.
        """
        ...


def is_fast_on(layout: Layout, provider: str) -> bool:
    """Whether ``layout``'s materialized form can beat dense on ``provider``."""
    return "*" in layout.fast_on or provider in layout.fast_on


def to_rows(candidate: Candidate, array: np.ndarray) -> np.ndarray:
    """Canonical weight-shaped array -> OBS orientation [outputs, reduction].

    MatMul/Gemm W[K, N] -> [N, K]; Conv W[O, C, kh, kw] -> [O, C·kh·kw] (columns grouped per input
    channel, c·kh·kw + i·kw + j).
    """
    if candidate.op == "Conv":
        return array.reshape(array.shape[0], -1)
    return array.T


def from_rows(candidate: Candidate, rows: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_rows`."""
    if candidate.op == "Conv":
        return rows.reshape(candidate.weight.shape)
    return np.ascontiguousarray(rows.T)


def as_matrix(S: np.ndarray) -> np.ndarray:
    """``S`` as a 2-D [N outputs, K reduction] array (raises otherwise)."""
    S = np.asarray(S)
    if S.ndim != 2:
        raise ValueError(f"saliency must be a 2-D [N outputs, K reduction] array, got {S.shape}")
    return S


def top_k_mask(scores: np.ndarray, keep: int) -> np.ndarray:
    """Bool mask of the ``keep`` largest entries along the last axis (exact count per slice).

    Mask pickers keep exact counts (the materialized layouts need exact shapes); ties are broken
    deterministically. ``argpartition`` (linear time) rather than a sort: the unstructured picker
    runs on every lazy block of large layers.
    """
    size = scores.shape[-1]
    mask = np.zeros(scores.shape, dtype=bool)
    if keep <= 0:
        return mask
    if keep >= size:
        mask[...] = True
        return mask
    order = np.argpartition(-scores, keep - 1, axis=-1)[..., :keep]
    np.put_along_axis(mask, order, True, axis=-1)
    return mask


def pruned_weight(candidate: Candidate, option: LayoutOption, solution) -> PrunedWeight:
    """A solver :class:`~onnxprune.reconstruct.obs.Solution` (OBS orientation) as canonical."""
    return PrunedWeight(option, from_rows(candidate, solution.mask),
                        from_rows(candidate, solution.weight), float(solution.err))
