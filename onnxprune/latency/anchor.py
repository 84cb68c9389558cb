"""The Amdahl bound measured, not summed: the all-fastest model timed against dense.

The latency table predicts the bound as ``T_dense / (base + Σ fastest option)``. At the bound
most of the model is gone, so what is left is a small difference of large, separately measured
numbers: the profile's share of the fixed ops, each structure's saving at its narrowest width,
the isolation→graph correction. A few percent of noise in any of them moved the digits CNN's bound
between 14.9x and 19.2x on one idle machine, and in-context effects the isolated timings cannot
see (a narrow structure's kernels fuse differently inside the graph) made the transformer's bound
2.68x where 3.27x was reachable.

So the bound is measured directly: every candidate is materialized at its fastest option (random
weights and masks of the option's family — speed depends on shapes, not values), and that model
is timed against the dense one in fresh interleaved session pairs, the statistic ``bench`` and
the final verification use (median over sessions of each session's median pair ratio). This is
one more model to time (a few seconds), and it is the number a user would measure.

The measurement then anchors the table: :func:`saving_scale_for` finds the one factor on every
option's predicted saving that makes the table's all-fastest prediction equal the measurement.
The dense end is exact already, so predictions in between interpolate between two measured ends,
and the DP, the "beyond the bound" refusal and the report all read one consistent bound.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.graph.candidates import Candidate
from onnxprune.latency.measure import SpeedResult
from onnxprune.layouts.base import DENSE, LayoutOption, PrunedWeight, to_rows

logger = logging.getLogger("onnxprune")

BOUND_SESSIONS = 5
"""Fresh session pairs the all-fastest model is timed in."""
BOUND_SECONDS = 5.0
"""Wall-clock budget of those pairs, over all sessions."""
BOUND_PRECISION = 0.05
"""Sessions are added, :data:`BOUND_SESSIONS` at a time, until the bound's spread (≈ 2 standard
errors) is at most this, relative: a model that runs in a fraction of a millisecond at its
fastest differs by ±30% from one fresh session to the next (digits CNN: 5.0 to 9.6x over five),
where a 90 ms one differs by ±3%."""
BOUND_MAX_ROUNDS = 4
"""At most this many rounds of :data:`BOUND_SESSIONS` sessions."""


@dataclass(frozen=True)
class MeasuredBound:
    """The all-fastest model's measured speedup over dense.

    Attributes:
        speedup: median over sessions of each session's median pair ratio.
        rel_spread: ≈ 2 standard errors of that median, relative (from the spread over sessions).
        result: the session-by-session measurement.
    """

    speedup: float
    rel_spread: float
    result: SpeedResult

    def to_json(self) -> dict:
        return {"speedup": self.speedup, "rel_spread": self.rel_spread,
                "sessions": [s.speedup_median for s in self.result.sessions]}


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
    from onnxprune.materialize import materialize

    return materialize(model, candidates, fastest_choice(candidates, options, seed))


def _structure_choice(candidate: Candidate, option: LayoutOption) -> PrunedWeight:
    from onnxprune.structures.shrink import consumer_rows

    context = candidate.structure
    assert context is not None
    rows = consumer_rows(context.structure, candidate, np.arange(option.param("keep")))
    mask = np.zeros(candidate.weight.shape, bool)
    if candidate.op == "Conv":
        mask[:, rows] = True
    else:
        mask[rows] = True
    weight = np.where(mask, candidate.weight, 0.0).astype(np.float32)
    return PrunedWeight(option, mask, weight, 0.0)


def bound_of(result: SpeedResult) -> MeasuredBound:
    """The median over sessions, with ≈ 2 standard errors of it (relative) as its spread."""
    medians = np.asarray([s.speedup_median for s in result.sessions], dtype=np.float64)
    speedup = result.speedup
    if len(medians) > 1 and speedup > 0:
        # Standard error of a median ≈ 1.2533 σ / √n; two of them, relative.
        spread = 2 * 1.2533 * float(np.std(medians, ddof=1)) / math.sqrt(len(medians)) / speedup
    else:
        spread = 0.0
    return MeasuredBound(speedup, spread, result)


def saving_scale_for(speedup_at: Callable[[float], float], measured: float,
                     low: float = 0.25, high: float = 4.0) -> float:
    """The factor ``k`` on every predicted saving with ``speedup_at(k) == measured``.

    ``speedup_at(k)`` is the table's all-fastest prediction with savings scaled by ``k``: it
    rises with ``k`` (more saved, faster). Bisection in ``[low, high]``; a measurement outside
    what that range can reach gets the nearest end (and a warning: the table and the model then
    disagree by more than a factor of 4 on what pruning saves).
    """
    if speedup_at(low) >= measured:
        k = low
    elif speedup_at(high) <= measured:
        k = high
    else:
        lo, hi = low, high
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if speedup_at(mid) < measured:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)
    logger.warning("the measured bound (%.2fx) is outside what the latency table can be "
                   "scaled to; its savings are scaled by %.2f", measured, k)
    return k
