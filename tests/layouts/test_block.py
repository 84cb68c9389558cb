"""Block layout: options, balanced masks, exactness of gather + batched MatMul / grouped Conv."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxprune.layouts.base import DEFAULT_LEVELS, LayoutOption, PrunedWeight, to_rows
from onnxprune.layouts.block import Block, check_block, pack_matmul
from onnxprune.layouts.registry import option_label
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
from tests.models import conv_model, gemm_model, matmul_model, shared_weight_model

LEVELS = st.sampled_from(DEFAULT_LEVELS)


def _weight(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _option(candidate, bk: int, bn: int, level: float) -> LayoutOption:
    options, reason = Block(sizes=(bk, bn), conv_sizes=(bk, bn)).options(candidate, [level])
    assert reason is None
    (option,) = [o for o in options if o.param("bk") == bk and o.param("bn") == bn]
    return option


@SETTINGS
@given(
    bk=st.sampled_from([16, 32]),
    bn=st.sampled_from([16, 32]),
    k_blocks=st.integers(2, 4),
    groups=st.integers(1, 3),
    level=LEVELS,
    rank=st.sampled_from([2, 3]),
    transposed=st.booleans(),
    with_bias=st.booleans(),
    opset=st.sampled_from([11, 13, 17]),
    seed=st.integers(0, 2**16),
)
def test_matmul_block_is_exact(
    bk, bn, k_blocks, groups, level, rank, transposed, with_bias, opset, seed
):
    rng = np.random.default_rng(seed)
    k_dim, n_dim = bk * k_blocks, bn * groups
    w = _weight(rng, k_dim, n_dim)
    bias = _weight(rng, n_dim) if with_bias else None
    lead = ("batch",) if rank == 2 else ("batch", "seq")
    model = matmul_model(
        w.T.copy() if transposed else w, lead, bias, weight_transposed=transposed, opset=opset
    )
    build_shape = (2, k_dim) if rank == 2 else (2, 3, k_dim)
    candidate = only_candidate(model, {"x": build_shape})
    layout = Block()
    option = _option(candidate, bk, bn, level)
    pruned = solve(layout, candidate, option)
    assert check_block(to_rows(candidate, pruned.mask), bk, bn, option.param("keep"))
    assert option.level == pytest.approx(1 - pruned.mask.mean())

    out = materialized(model, layout, candidate, pruned)
    stored = pruned.weight.T.copy() if transposed else pruned.weight
    reference = matmul_model(stored, lead, bias, weight_transposed=transposed, opset=opset)
    for shape in (build_shape, (5, k_dim) if rank == 2 else (5, 7, k_dim)):
        assert_same_outputs(out, reference, feeds_for({"x": shape}, seed))

    ops = op_counts(out)
    assert ops["Slice"] == (1 if rank == 3 and opset < 15 else 0)
    assert ops["Gather"] == 1 and ops["MatMul"] == 1
    assert "w" not in initializer_sizes(out)
    keep = option.param("keep")
    assert max(initializer_sizes(out).values()) == keep * bk * n_dim < k_dim * n_dim


@SETTINGS
@given(
    trans_a=st.integers(0, 1),
    trans_b=st.integers(0, 1),
    alpha=st.sampled_from([1.0, 0.5, -2.0]),
    beta=st.sampled_from([1.0, 0.25]),
    c_kind=st.sampled_from(["none", "vector", "row", "scalar"]),
    bk=st.sampled_from([16, 32]),
    bn=st.sampled_from([16, 32]),
    level=LEVELS,
    seed=st.integers(0, 2**16),
)
def test_gemm_block_is_exact(trans_a, trans_b, alpha, beta, c_kind, bk, bn, level, seed):
    rng = np.random.default_rng(seed)
    k_dim, n_dim = bk * 3, bn * 2
    w = _weight(rng, k_dim, n_dim)
    c = {
        "none": None,
        "vector": _weight(rng, n_dim),
        "row": _weight(rng, 1, n_dim),
        "scalar": _weight(rng, 1),
    }[c_kind]
    stored = w.T.copy() if trans_b else w

    def build(weight):
        return gemm_model(weight, c, trans_a, trans_b, alpha, beta)

    model = build(stored)
    x_shape = (k_dim, 4) if trans_a else (4, k_dim)
    candidate = only_candidate(model, {"x": x_shape})
    layout = Block()
    pruned = solve(layout, candidate, _option(candidate, bk, bn, level))
    out = materialized(model, layout, candidate, pruned)
    canonical = pruned.weight / np.float32(alpha)
    reference = build(canonical.T.copy() if trans_b else canonical)
    for x in (x_shape, (k_dim, 9) if trans_a else (9, k_dim)):
        assert_same_outputs(out, reference, feeds_for({"x": x}, seed))
    ops = op_counts(out)
    assert "Gemm" not in ops and ops["Gather"] == 1
    assert ops["Transpose"] == 2 + trans_a


@SETTINGS
@given(
    bi=st.sampled_from([8, 16]),
    bo=st.sampled_from([8, 16]),
    in_blocks=st.integers(2, 3),
    out_groups=st.integers(1, 3),
    kernel=st.sampled_from([1, 3, 5]),
    stride=st.sampled_from([1, 2]),
    dilation=st.sampled_from([1, 2]),
    pads=st.tuples(*[st.integers(0, 2)] * 4),
    with_bias=st.booleans(),
    level=LEVELS,
    seed=st.integers(0, 2**16),
)
def test_conv_block_is_exact(
    bi, bo, in_blocks, out_groups, kernel, stride, dilation, pads, with_bias, level, seed
):
    rng = np.random.default_rng(seed)
    c_dim, o_dim = bi * in_blocks, bo * out_groups
    w = _weight(rng, o_dim, c_dim, kernel, kernel)
    bias = _weight(rng, o_dim) if with_bias else None

    def build(weight):
        return conv_model(weight, bias, (stride, stride), pads, (dilation, dilation), hw=(9, 10))

    model = build(w)
    candidate = only_candidate(model, {"x": (2, c_dim, 9, 10)})
    layout = Block()
    option = _option(candidate, bi, bo, level)
    pruned = solve(layout, candidate, option)
    keep = option.param("keep")
    assert check_block(to_rows(candidate, pruned.mask), bi, bo, keep, col_unit=kernel * kernel)
    out = materialized(model, layout, candidate, pruned)
    reference = build(pruned.weight)
    for batch in (2, 3):
        assert_same_outputs(out, reference, feeds_for({"x": (batch, c_dim, 9, 10)}, seed))
    (conv,) = [n for n in out.graph.node if n.op_type == "Conv"]
    group = next(a.i for a in conv.attribute if a.name == "group")
    assert group == out_groups
    assert op_counts(out)["Gather"] == 1
    assert initializer_sizes(out)[conv.input[1]] == o_dim * keep * bi * kernel * kernel


def test_shared_weight_rewrites_every_site_with_one_packed_constant():
    rng = np.random.default_rng(0)
    w = _weight(rng, 64, 32)
    model = shared_weight_model(w)
    candidate = only_candidate(model, {"x1": (2, 64), "x2": (2, 3, 64)})
    assert len(candidate.sites) == 2
    layout = Block()
    pruned = solve(layout, candidate, _option(candidate, 16, 16, 0.5))
    out = materialized(model, layout, candidate, pruned)
    reference = shared_weight_model(pruned.weight)
    feeds = feeds_for({"x1": (4, 64), "x2": (4, 3, 64)})
    assert_same_outputs(out, reference, feeds)
    assert op_counts(out)["Gather"] == 2
    packed = [t for t in out.graph.initializer if "block_weight" in t.name]
    assert len(packed) == 1
    names = [n.name for n in out.graph.node]
    assert len(names) == len(set(names))


def test_options_levels_are_exact_and_deduplicated():
    rng = np.random.default_rng(0)
    candidate = only_candidate(matmul_model(_weight(rng, 64, 48)), {"x": (2, 64)})
    options, reason = Block().options(candidate)
    assert reason is None
    shapes = {(o.param("bk"), o.param("bn")) for o in options}
    # 48 = 16·3: only bn=16 divides N; bk=64 would leave a single block (no level).
    assert shapes == {(16, 16), (32, 16)}
    for option in options:
        blocks = 64 // option.param("bk")
        assert 1 <= option.param("keep") <= blocks - 1
        assert option.level == pytest.approx(1 - option.param("keep") / blocks)
    keeps_32 = sorted(o.param("keep") for o in options if o.param("bk") == 32)
    assert keeps_32 == [1]
    assert len(options) == len(set(options))
    assert option_label(options[0]).startswith("block 16x16")


def test_options_give_a_reason_when_no_block_fits():
    rng = np.random.default_rng(0)
    candidate = only_candidate(matmul_model(_weight(rng, 24, 40)), {"x": (2, 24)})
    options, reason = Block().options(candidate)
    assert options == [] and "24" in reason
    conv = only_candidate(conv_model(_weight(rng, 16, 1, 3, 3)), {"x": (1, 1, 8, 8)})
    options, reason = Block().options(conv)
    assert options == [] and "C=1" in reason


def test_pack_rejects_unbalanced_masks_and_pads_short_groups():
    w = np.zeros((64, 32), np.float32)
    mask = np.zeros_like(w, dtype=bool)
    mask[:32, :16] = True  # group 0 keeps blocks 0 and 1; group 1 keeps none
    w[mask] = 1.0
    index, packed = pack_matmul(w, mask, 16, 16, keep=2)
    assert index.tolist() == [[0, 1], [0, 1]]
    assert packed.shape == (2, 32, 16) and not packed[1].any()
    with pytest.raises(ValueError, match="balanced"):
        pack_matmul(w, mask, 16, 16, keep=1)
    w[40, 20] = 1.0  # a weight outside the kept blocks
    with pytest.raises(ValueError, match="outside"):
        pack_matmul(w, mask, 16, 16, keep=2)


def test_materialize_accepts_a_magnitude_solution():
    """A PrunedWeight built by hand (not by solve) materializes too."""
    rng = np.random.default_rng(1)
    w = _weight(rng, 32, 32)
    model = matmul_model(w)
    candidate = only_candidate(model, {"x": (2, 32)})
    option = LayoutOption("block", 0.5, (("bk", 16), ("bn", 16), ("keep", 1)))
    mask = np.zeros_like(w, dtype=bool)
    mask[:16, :16] = mask[16:, 16:] = True
    pruned = PrunedWeight(option, mask, np.where(mask, w, 0).astype(np.float32), 0.5)
    out = materialized(model, Block(), candidate, pruned)
    assert_same_outputs(out, matmul_model(pruned.weight), feeds_for({"x": (3, 32)}))
