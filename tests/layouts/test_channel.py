"""Channel layout: options, and exactness of the smaller node + shape-restoring Gather."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxprune.layouts.base import DEFAULT_LEVELS, LayoutOption, to_rows
from onnxprune.layouts.channel import Channel, check_channel
from tests.layouts.common import (
    SETTINGS,
    assert_same_outputs,
    feeds_for,
    initializer_sizes,
    materialized,
    only_candidate,
    op_counts,
    solve,
)
from tests.models import conv_model, gemm_model, matmul_model

LEVELS = st.sampled_from(DEFAULT_LEVELS)


def _weight(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _option(candidate, level: float) -> LayoutOption:
    (option,), reason = Channel().options(candidate, [level])
    assert reason is None
    return option


@SETTINGS
@given(
    k_dim=st.integers(1, 40),
    n_dim=st.integers(2, 40),
    level=LEVELS,
    rank=st.sampled_from([2, 3]),
    transposed=st.booleans(),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matmul_channel_is_exact(k_dim, n_dim, level, rank, transposed, with_bias, seed):
    rng = np.random.default_rng(seed)
    w = _weight(rng, k_dim, n_dim)
    bias = _weight(rng, n_dim) if with_bias else None
    lead = ("batch",) if rank == 2 else ("batch", "seq")
    model = matmul_model(w.T.copy() if transposed else w, lead, bias, weight_transposed=transposed)
    build_shape = (2, k_dim) if rank == 2 else (2, 3, k_dim)
    candidate = only_candidate(model, {"x": build_shape})
    layout = Channel()
    option = _option(candidate, level)
    pruned = solve(layout, candidate, option)
    keep = option.param("keep")
    assert check_channel(to_rows(candidate, pruned.mask), keep)

    out = materialized(model, layout, candidate, pruned)
    stored = pruned.weight.T.copy() if transposed else pruned.weight
    reference = matmul_model(stored, lead, bias, weight_transposed=transposed)
    for shape in (build_shape, (5, k_dim) if rank == 2 else (5, 7, k_dim)):
        assert_same_outputs(out, reference, feeds_for({"x": shape}, seed))
    assert op_counts(out)["Gather"] == 1
    assert max(initializer_sizes(out).values()) <= max(k_dim * (keep + 1), n_dim)


@SETTINGS
@given(
    trans_a=st.integers(0, 1),
    trans_b=st.integers(0, 1),
    alpha=st.sampled_from([1.0, 0.5, -2.0]),
    beta=st.sampled_from([1.0, 0.25]),
    c_kind=st.sampled_from(["none", "vector", "scalar", "zero_removed"]),
    k_dim=st.integers(1, 24),
    n_dim=st.integers(2, 24),
    level=LEVELS,
    seed=st.integers(0, 2**16),
)
def test_gemm_channel_is_exact(trans_a, trans_b, alpha, beta, c_kind, k_dim, n_dim, level, seed):
    rng = np.random.default_rng(seed)
    w = _weight(rng, k_dim, n_dim)
    c = {
        "none": None,
        "vector": _weight(rng, n_dim),
        "scalar": _weight(rng, 1),
        "zero_removed": _weight(rng, n_dim),
    }[c_kind]

    def build(weight, c):
        return gemm_model(weight, c, trans_a, trans_b, alpha, beta)

    model = build(w.T.copy() if trans_b else w, c)
    x_shape = (k_dim, 3) if trans_a else (3, k_dim)
    candidate = only_candidate(model, {"x": x_shape})
    layout = Channel()
    pruned = solve(layout, candidate, _option(candidate, level))
    if c_kind == "zero_removed":  # removed channels with zero bias: the bias moves inside
        c = np.where(pruned.mask.any(axis=0), c, 0).astype(np.float32)
        model = build(w.T.copy() if trans_b else w, c)
        candidate = only_candidate(model, {"x": x_shape})
    out = materialized(model, layout, candidate, pruned)
    canonical = pruned.weight / np.float32(alpha)
    reference = build(canonical.T.copy() if trans_b else canonical, c)
    for x in (x_shape, (k_dim, 8) if trans_a else (8, k_dim)):
        assert_same_outputs(out, reference, feeds_for({"x": x}, seed))
    ops = op_counts(out)
    assert ops["Gemm"] == 1 and ops["Gather"] == 1
    assert ops["Add"] == (1 if c_kind in ("vector", "scalar") else 0)


@SETTINGS
@given(
    c_dim=st.integers(1, 12),
    o_dim=st.integers(2, 12),
    kernel=st.sampled_from([1, 3, 5]),
    stride=st.sampled_from([1, 2]),
    dilation=st.sampled_from([1, 2]),
    pads=st.tuples(*[st.integers(0, 2)] * 4),
    with_bias=st.booleans(),
    level=LEVELS,
    seed=st.integers(0, 2**16),
)
def test_conv_channel_is_exact(
    c_dim, o_dim, kernel, stride, dilation, pads, with_bias, level, seed
):
    rng = np.random.default_rng(seed)
    w = _weight(rng, o_dim, c_dim, kernel, kernel)
    bias = _weight(rng, o_dim) if with_bias else None

    def build(weight):
        return conv_model(weight, bias, (stride, stride), pads, (dilation, dilation), hw=(9, 10))

    model = build(w)
    candidate = only_candidate(model, {"x": (2, c_dim, 9, 10)})
    layout = Channel()
    option = _option(candidate, level)
    pruned = solve(layout, candidate, option)
    out = materialized(model, layout, candidate, pruned)
    reference = build(pruned.weight)
    for batch in (2, 3):
        assert_same_outputs(out, reference, feeds_for({"x": (batch, c_dim, 9, 10)}, seed))
    (conv,) = [n for n in out.graph.node if n.op_type == "Conv"]
    assert initializer_sizes(out)[conv.input[1]] == (option.param("keep") + 1) * c_dim * kernel**2


def test_options_clamp_and_deduplicate():
    rng = np.random.default_rng(0)
    candidate = only_candidate(matmul_model(_weight(rng, 8, 4)), {"x": (2, 8)})
    options, reason = Channel().options(candidate)
    assert reason is None
    assert [o.param("keep") for o in options] == [3, 2, 1]
    assert [o.level for o in options] == pytest.approx([0.25, 0.5, 0.75])
    single = only_candidate(matmul_model(_weight(rng, 8, 1)), {"x": (2, 8)})
    assert Channel().options(single)[0] == []


def test_all_but_one_removed_and_nan_inputs_propagate_like_masked_dense():
    rng = np.random.default_rng(3)
    w = _weight(rng, 6, 5)
    bias = _weight(rng, 5)
    model = gemm_model(w, bias)
    candidate = only_candidate(model, {"x": (2, 6)})
    option = LayoutOption("channel", 0.8, (("keep", 1),))
    pruned = solve(Channel(), candidate, option)
    out = materialized(model, Channel(), candidate, pruned)
    reference = gemm_model(pruned.weight, bias)
    feeds = feeds_for({"x": (4, 6)})
    assert_same_outputs(out, reference, feeds)
    feeds["x"][1, 2] = np.nan
    from tests.layouts.common import run

    got, want = run(out, feeds)[0], run(reference, feeds)[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
