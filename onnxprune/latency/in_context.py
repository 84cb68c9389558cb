"""Savings of a shared weight's options measured inside the whole model, not summed over sites.

An unrolled recurrent layer shares one weight across dozens of tiny Gemms (a CRNN's BiLSTM
unrolled into 80 Gemms on 4 weights, batch 1). The table times each site alone and sums: a tiny
Gemm alone is mostly its own launch and cache warm-up, and what a sparser weight saves there is
not what it saves in the graph, where the 80 sites run back to back with the weight hot in cache.
The table predicted 2.36x for such a model and the model measured 1.42x.

So for a candidate with many sites, a few of its options are timed in context: the whole model
with only that candidate rewritten, against the dense model, interleaved
(:func:`~onnxprune.latency.measure.bench_pair`). The ratio of the in-context saving to the
table's saving gives one factor per candidate, which scales all of that candidate's savings
(its options differ in level and block shape, and a factor measured at three of them carries to
the rest far better than the isolated sum did). Timings are cached with the table's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx

from onnxprune.common.runtime import RuntimeConfig
from onnxprune.graph.candidates import Candidate
from onnxprune.latency.measure import bench_pair
from onnxprune.latency.random_masks import model_with_options
from onnxprune.layouts.base import DENSE, LayoutOption

logger = logging.getLogger("onnxprune")

MIN_SITES = 4
"""Candidates with at least this many sites (nodes sharing the weight) are timed in context."""
SAMPLES = 3
"""Options per such candidate timed in context: the fastest, and two spread over the savings."""
SESSIONS = 2
SECONDS = 0.6
"""Per option: fresh session pairs, and each pair's wall-clock budget."""
FACTOR_RANGE = (0.0, 2.0)


def shared_candidates(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates whose weight is used by at least :data:`MIN_SITES` nodes."""
    return [c for c in candidates if len(c.sites) >= MIN_SITES]


def sample_options(times: Sequence[tuple[LayoutOption, float]]) -> list[LayoutOption]:
    """A few options spread over what they save: the fastest, and at 1/3 and 2/3 of its saving.

    ``times`` are (option, predicted seconds), dense included.
    """
    dense = next(t for o, t in times if o == DENSE)
    faster = sorted(((dense - t, o) for o, t in times if o != DENSE and t < dense),
                    key=lambda pair: pair[0])
    if not faster:
        return []
    best = faster[-1][0]
    picked: list[LayoutOption] = [faster[-1][1]]
    for fraction in (2 / 3, 1 / 3)[: SAMPLES - 1]:
        option = min(faster, key=lambda pair: abs(pair[0] - fraction * best))[1]
        if option not in picked:
            picked.append(option)
    return picked


def saving_factor(
    model: onnx.ModelProto,
    candidates: Sequence[Candidate],
    candidate: Candidate,
    predicted: Mapping[LayoutOption, float],
    total_s: float,
    feed: Mapping[str, np.ndarray],
    runtime: RuntimeConfig,
    cached: Callable[[str, LayoutOption], float | None] | None = None,
    store: Callable[[str, LayoutOption, float], None] | None = None,
) -> tuple[float, dict[LayoutOption, float]]:
    """In-context saving over predicted saving for ``candidate`` (median over its samples).

    Args:
        model: the whole dense model.
        candidates: all candidates of ``model`` (the rewrite needs them).
        candidate: the shared-weight candidate.
        predicted: per sampled option, the table's predicted in-graph saving in seconds.
        total_s: the dense model's time per run (in-context savings are ``total·(1 − 1/r)``).
        feed: inputs at the deployment shapes.
        runtime: EP and threads.
        cached / store: read and write one option's measured speedup ratio.

    Returns:
        The factor, and each sampled option's measured in-context saving in seconds.
    """
    dense_payload: bytes | None = None  # serialized on the first option not in the cache
    measured: dict[LayoutOption, float] = {}
    factors = []
    for option, saving in predicted.items():
        ratio = cached(candidate.name, option) if cached is not None else None
        if ratio is None:
            dense_payload = dense_payload or model.SerializeToString()
            rewritten = model_with_options(model, candidates,
                                           {candidate.name: option}).SerializeToString()
            ratios = [bench_pair(dense_payload, rewritten, feed, runtime,
                                 max_seconds=SECONDS).speedup_median for _ in range(SESSIONS)]
            ratio = float(np.median(ratios))
            if store is not None:
                store(candidate.name, option, ratio)
        measured[option] = total_s * (1.0 - 1.0 / max(ratio, 1e-6))
        if saving > 0:
            factors.append(measured[option] / saving)
    if not factors:
        return 1.0, measured
    factor = float(np.clip(np.median(factors), *FACTOR_RANGE))
    logger.info("%s (%d sites): in context its options save %.2fx what isolation predicts",
                candidate.name, len(candidate.sites), factor)
    return factor, measured
