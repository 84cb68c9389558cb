"""One candidate site under one option, alone: its model, its inputs, its cache key, its timing.

The table times every (candidate, site, option) in isolation: the node at its real input shape,
materialized with that option (``layouts.isolate``), or a structure's subgraph cut to a width.
This module says what is built (:func:`_default_isolated`; :func:`_reference`, what an option is
timed against; :func:`isolated_feed`), what the timing depends on (:func:`site_signature` and a
digest of the source that builds it, so an edited layout never reuses old numbers), and how one
option is timed against its reference. Kept apart from :mod:`~onnxprune.latency.build`, which
plans, orders and combines these timings, and shared with :mod:`~onnxprune.latency.refine`,
which takes some of them again.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from onnxprune.common.runtime import RuntimeConfig, synthetic_feed
from onnxprune.graph.candidates import Candidate
from onnxprune.graph.shapes import graph_inputs
from onnxprune.latency.cache import fingerprint
from onnxprune.latency.measure import RatioTiming, Timing, time_ratio
from onnxprune.layouts.base import DENSE, LayoutOption

logger = logging.getLogger("onnxprune")

IsolatedBuilder = Callable[[Candidate, LayoutOption, int], onnx.ModelProto]
Timer = Callable[[onnx.ModelProto, Mapping[str, np.ndarray], RuntimeConfig], Timing]
PairTimer = Callable[[onnx.ModelProto, onnx.ModelProto, Mapping[str, np.ndarray], RuntimeConfig],
                     RatioTiming]


def site_signature(candidate: Candidate, site_index: int, option: LayoutOption) -> dict:
    """What an isolated timing depends on: op, attributes, shapes and the option."""
    site = candidate.sites[site_index]
    return {
        "op": candidate.op,
        "attrs": {k: candidate.attrs[k] for k in sorted(candidate.attrs)},
        "weight_shape": list(candidate.weight.shape),
        "bias": candidate.bias is not None,
        "input_shape": list(site.input_shape),
        "output_shape": list(site.output_shape),
        "option": option.to_json(),
        "structure": (candidate.structure.signature
                      if option.layout == "structure" and candidate.structure else None),
    }


def _default_isolated(candidate: Candidate, option: LayoutOption, site_index: int):
    from onnxprune.layouts import isolate

    if option == DENSE:
        return isolate.dense_isolated_model(candidate, site_index)
    if option.layout == "structure":
        return _structure_at(candidate, option.param("keep"))
    return isolate.isolated_model(candidate, option, site_index=site_index)


def _structure_at(candidate: Candidate, keep: int) -> onnx.ModelProto:
    """The candidate's structure subgraph at ``keep`` channels (which ones does not matter)."""
    from onnxprune.structures.shrink import StructureCut, apply_cuts

    context = candidate.structure
    assert context is not None
    model = onnx.ModelProto()
    model.CopyFrom(context.isolated)
    cut = StructureCut(context.structure, context.structure.first_kept(keep))
    return apply_cuts(model, [cut], {candidate.name: candidate,
                                     **{c.name: c for c in (*context.producers,
                                                            *context.companions)}})


def _reference(builder: IsolatedBuilder, candidate: Candidate, option: LayoutOption,
               index: int) -> onnx.ModelProto:
    """What an option is timed against: the site's dense node, or its structure's dense subgraph.

    A structure option saves time in every node of its structure; its table time is the
    consumer's dense time minus that saving, so the table stays one row per candidate.
    """
    if option.layout == "structure" and candidate.structure is not None:
        return candidate.structure.isolated
    return builder(candidate, DENSE, index)


@functools.lru_cache(maxsize=64)
def _source_digest(paths: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        try:
            digest.update(Path(path).read_bytes())
        except OSError:
            digest.update(path.encode())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=256)
def _code_version(builder: IsolatedBuilder, layout: str) -> str:
    """Digest of the source that builds isolated models for ``layout`` (cache invalidation)."""
    modules = []
    if builder is _default_isolated:
        try:
            from onnxprune.layouts import isolate
            from onnxprune.layouts.registry import get_layout

            modules.append(isolate)
            impl = get_layout(layout)
            modules.append(inspect.getmodule(impl if isinstance(impl, type) else type(impl)))
        except Exception as exc:  # noqa: BLE001 - an unknown layout fails later, with a message
            logger.debug("no layout source for %s: %s", layout, exc)
    else:
        modules.append(inspect.getmodule(builder))
    files = tuple(sorted({getattr(m, "__file__", None) or repr(m) for m in modules if m}))
    return _source_digest(files)


def _timing_key(env: Mapping, builder: IsolatedBuilder, candidate: Candidate, index: int,
                option: LayoutOption) -> tuple[str, dict]:
    meta = {
        "env": env,
        "code": _code_version(builder, option.layout),
        "signature": site_signature(candidate, index, option),
    }
    return fingerprint(meta), meta


def _time_against(
    reference: onnx.ModelProto, model: onnx.ModelProto, feed: Mapping[str, np.ndarray],
    runtime: RuntimeConfig, timer: Timer | None, pair_timer: PairTimer | None,
    reference_s: float | None,
) -> RatioTiming:
    """Time an option against its site's dense model (interleaved unless a timer is injected)."""
    if pair_timer is not None:
        return pair_timer(reference, model, feed, runtime)
    if timer is not None:  # an injected single-model timer (tests): ratio to the dense timing
        timing = timer(model, feed, runtime)
        ref = reference_s if reference_s else timing.median_s
        return RatioTiming(timing.median_s / ref, timing.rel_se, ref, timing.median_s,
                           timing.repeats)
    return time_ratio(reference, model, feed, runtime)


def isolated_feed(model: onnx.ModelProto, site_input_shape: Sequence[int]) -> dict:
    """Synthetic inputs for an isolated model: declared shapes, else the site's activation shape."""
    specs = []
    inputs = graph_inputs(model)
    for value in inputs:
        tensor = value.type.tensor_type
        dims = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in tensor.shape.dim
        ]
        if None in dims or not tensor.HasField("shape"):
            if len(inputs) != 1:
                raise ValueError(
                    f"isolated model input {value.name!r} has a dynamic shape and the model has "
                    f"{len(inputs)} inputs: cannot tell which is the activation"
                )
            dims = list(site_input_shape)
        specs.append((value.name, tensor.elem_type, tuple(dims)))
    return synthetic_feed(specs)
