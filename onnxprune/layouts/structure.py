"""The structure layout: a channel structure at one width, decided at its consumer.

A structure (:mod:`onnxprune.structures.discover`) ties a producer's output channels through the
ops that carry them to one consumer. Its options live on the consumer candidate: keep ``k`` of
the ``width`` channels. Solving is structured OBS on the consumer's input Hessian
(:func:`onnxprune.reconstruct.structured.remove_channels`: channel groups of ``consumer_group``
rows, or a conv input channel's ``kh·kw`` taps), which picks the channels and updates the
consumer's remaining weights; the masked-dense weight is the consumer's weight with the removed
channels' rows zeroed, so the stitched model checks exactness unchanged. Materialization shrinks
the whole chain (:func:`onnxprune.structures.shrink.apply_cuts`) and is run by
:func:`onnxprune.layouts.materialize.materialize` on the model, not per node.

Kept counts are rounded to multiples of 8 when the structure is at least 64 wide: ORT's CPU conv
kernels work in blocks of 8 (NCHWc) and MatMul kernels in similar panels, so odd widths waste the
speed a removed channel should buy.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from onnxprune.layouts.base import (
    ALL_PROVIDERS,
    DEFAULT_LEVELS,
    Companion,
    LayoutOption,
    PrunedWeight,
    from_rows,
    to_rows,
)

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from onnxprune.graph.candidates import Candidate
    from onnxprune.reconstruct.obs import ObsSolver
    from onnxprune.structures.types import ChannelGroup, Structure

ROUND_TO = 8
PERCDAMP = 0.3
"""Dampening of the structured solve (fraction of mean diag H). Removing whole channels asks
the remaining ones for a large compensation, which fits the calibration images it saw: on an
EfficientNet-Lite0 projection conv (480 -> 420 channels) the held-out error was 0.089 at 0.01,
0.052 at 0.3 and 0.049 at 1.0, and at 240 channels 0.278 / 0.189 / 0.191."""
_PASSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def structure_keeps(width: int, levels: Iterable[float]) -> list[int]:
    """Distinct kept-channel counts for ``levels`` (fractions removed), in [1, width − 1]."""
    keeps = []
    for level in levels:
        keep = round((1.0 - level) * width)
        if width >= 8 * ROUND_TO:
            keep = max(ROUND_TO, int(round(keep / ROUND_TO)) * ROUND_TO)
        keep = min(max(keep, 1), width - 1)
        if keep not in keeps:
            keeps.append(keep)
    return keeps


class StructureLayout:
    """Channels of a structure removed at its consumer (see the module docstring)."""

    name: ClassVar[str] = "structure"
    fast_on: ClassVar[frozenset[str]] = ALL_PROVIDERS

    def options(
        self, candidate: Candidate, levels: Iterable[float] = DEFAULT_LEVELS
    ) -> tuple[list[LayoutOption], str | None]:
        context = candidate.structure
        if context is None:
            return [], "not the consumer of a channel structure"
        width = context.structure.width
        if width < 2:
            return [], "a structure of one channel"
        keeps = [k for k in structure_keeps(width, levels)
                 if context.structure.keep_counts(k) is not None]
        if not keeps:
            return [], "every width would empty a producer or a Split piece"
        return [LayoutOption(self.name, 1.0 - keep / width, (("keep", keep), ("width", width)))
                for keep in keeps], None

    @staticmethod
    def label(option: LayoutOption) -> str:
        return f"structure {option.param('keep')}/{option.param('width')} channels"

    @staticmethod
    def granularity(option: LayoutOption) -> int:
        return 1 << 30

    def solve(self, candidate: Candidate, solver: ObsSolver | GroupSolver,
              option: LayoutOption) -> PrunedWeight:
        """Structured OBS at the consumer; a coupled group's consumers are solved jointly (one
        channel set, each consumer's own update) and returned as the solution's companions."""
        context = candidate.structure
        if context is None:
            raise ValueError(f"{candidate.name} is not the consumer of a structure")
        from onnxprune.reconstruct.structured import remove_channels_jointly

        parts = [(candidate, solver.hessian)]
        if context.companions:
            if not isinstance(solver, GroupSolver):
                raise ValueError(f"{candidate.name} decides a coupled group: it needs a "
                                 "GroupSolver with every consumer's Hessian")
            parts += list(solver.companions)
        keep = option.param("keep")
        passes = _PASSES.setdefault(solver, {})
        if keep not in passes:
            options, _ = self.options(candidate)
            keeps = sorted({o.param("keep") for o in options} | {keep})
            structure = context.structure
            passes.update(remove_channels_jointly(
                [(to_rows(c, c.weight), H, _channel_columns(structure, c),
                  structure.map_of(c.name)) for c, H in parts], keeps, percdamp=PERCDAMP,
                width=structure.width, segments=structure.segments,
                counts=structure.keep_counts))
        (own, *others) = [(c, from_rows(c, sol.weight).astype(np.float32),
                           structure_mask(c, sol.kept, context.structure), float(sol.err))
                          for (c, _), sol in zip(parts, passes[keep], strict=True)]
        companions = tuple(Companion(c.name, mask, weight, err) for c, weight, mask, err in others)
        err = own[3] + sum(c.err for c in companions)
        return PrunedWeight(option, own[2], own[1], err, companions)

    def materialize(self, graph: gs.Graph, candidate: Candidate, pruned: PrunedWeight) -> None:
        raise NotImplementedError(
            "structures are materialized on the model by onnxprune.layouts.materialize, "
            "not per node")


@dataclass(frozen=True, eq=False)
class GroupSolver:
    """What a coupled group's solve needs: the deciding consumer's solver, and each other
    consumer (possibly with a substituted weight, as error feedback solves for) with its input
    Hessian. Only Hessians are read: structured OBS inverts them itself."""

    decider: ObsSolver
    companions: tuple[tuple[Candidate, np.ndarray], ...]

    @property
    def hessian(self) -> np.ndarray:
        return self.decider.hessian


def _channel_columns(structure: Structure | ChannelGroup, candidate: Candidate) -> int:
    """Columns of the consumer's OBS rows per channel (a conv input channel's kh·kw taps)."""
    if candidate.op == "Conv":
        return int(np.prod(candidate.weight.shape[2:]))
    return structure.group_of(candidate.name)


def structure_mask(candidate: Candidate, kept: np.ndarray,
                   structure: Structure | ChannelGroup | None = None) -> np.ndarray:
    """A consumer's weight mask when its structure keeps channels ``kept`` (a Conv's kept
    input channels are axis 1, a MatMul/Gemm's rows axis 0); :func:`kept_channels` inverts it.
    ``structure``: the one the candidate consumes (default: the one decided at it)."""
    from onnxprune.structures.shrink import consumer_rows

    structure = structure or candidate.structure.structure
    rows = consumer_rows(structure, candidate, kept)
    mask = np.zeros(candidate.weight.shape, bool)
    if candidate.op == "Conv":
        mask[:, rows] = True
    else:
        mask[rows] = True
    return mask


def kept_channels(candidate: Candidate, pruned: PrunedWeight) -> np.ndarray:
    """The kept channel indices of a solved structure option (from its masks: the deciding
    consumer's and, in a coupled group, every other consumer's, since where Concat and Split
    move the channels one consumer may read only some of them)."""
    structure = candidate.structure.structure
    kept: set[int] = set()
    for name, mask in [(candidate.name, pruned.mask),
                       *[(c.name, c.mask) for c in pruned.companions]]:
        if mask.ndim == 4:  # a Conv's input channels
            alive = mask.any(axis=(0, 2, 3))
        else:
            alive = mask.any(axis=1).reshape(-1, structure.group_of(name)).any(axis=1)
        kept.update(structure.map_of(name)[alive].tolist())
    return np.asarray(sorted(kept), dtype=np.int64)
