"""Models rewritten to chosen options with random masks: what timing a choice needs.

A layout option's speed depends on the shapes and sparsity pattern it leaves, not on which weights
survive, so timing a choice needs no data and no solver: every candidate gets its option's family
of mask from random scores (:func:`fastest_choice`) and the model is materialized with it
(:func:`model_with_options`). Both the bound's measurement (:mod:`~onnxprune.latency.anchor`,
the all-fastest model) and in-context timing (:mod:`~onnxprune.latency.in_context`, one
candidate's option inside the whole model) build such models; this module sits below both so
that neither imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnxprune.graph.candidates import Candidate
from onnxprune.layouts.base import DENSE, Companion, LayoutOption, PrunedWeight, to_rows


def fastest_choice(
    candidates: Sequence[Candidate],
    options: Mapping[str, LayoutOption],
    seed: int = 0,
) -> dict[str, PrunedWeight]:
    """A solution per non-dense ``options[name]`` with random masks (timing only, no data).

    Structure options keep their first ``keep`` channels (which ones does not change the speed);
    every other layout picks its mask from random scores with its own picker, as isolated timing
    does (:class:`onnxprune.layouts.isolate.RandomMaskSolver`).
    """
    from onnxprune.layouts.isolate import RandomMaskSolver
    from onnxprune.layouts.registry import get_layout

    rng = np.random.default_rng(seed)
    chosen: dict[str, PrunedWeight] = {}
    for cand in candidates:
        option = options.get(cand.name, DENSE)
        if option.layout == DENSE.layout:
            continue
        if option.layout == "structure":
            chosen[cand.name] = _structure_choice(cand, option)
        else:
            solver = RandomMaskSolver(to_rows(cand, cand.weight), rng)
            chosen[cand.name] = get_layout(option.layout).solve(cand, solver, option)
    return chosen


def model_with_options(
    model: onnx.ModelProto,
    candidates: Sequence[Candidate],
    options: Mapping[str, LayoutOption],
    seed: int = 0,
) -> onnx.ModelProto:
    """``model`` with each candidate rewritten to ``options[name]`` (random masks, timing only):
    the all-fastest model of the bound, or one candidate's option in context."""
    from onnxprune.layouts.materialize import materialize

    return materialize(model, candidates, fastest_choice(candidates, options, seed))


def _structure_choice(candidate: Candidate, option: LayoutOption) -> PrunedWeight:
    from onnxprune.layouts.structure import structure_mask

    context = candidate.structure
    assert context is not None
    kept = context.structure.first_kept(option.param("keep"))
    mask = structure_mask(candidate, kept)
    weight = np.where(mask, candidate.weight, 0.0).astype(np.float32)
    companions = []
    for other in context.companions:  # a coupled group's other consumers lose the same ones
        other_mask = structure_mask(other, kept, context.structure)
        companions.append(Companion(other.name, other_mask,
                                    np.where(other_mask, other.weight, 0.0).astype(np.float32),
                                    0.0))
    return PrunedWeight(option, mask, weight, 0.0, tuple(companions))
