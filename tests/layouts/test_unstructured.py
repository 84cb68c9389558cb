"""Unstructured layout: levels, masked dense, and the optional sparse_initializer storage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxprune.layouts.base import DEFAULT_LEVELS
from onnxprune.layouts.registry import option_label
from onnxprune.layouts.unstructured import Unstructured
from tests.layouts.common import (
    SETTINGS,
    assert_same_outputs,
    feeds_for,
    materialized,
    only_candidate,
    op_counts,
    solve,
)
from tests.models import conv_model, gemm_model, matmul_model


def _weight(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


@SETTINGS
@given(
    op=st.sampled_from(["matmul", "gemm", "conv"]),
    level=st.sampled_from(DEFAULT_LEVELS),
    sparse=st.booleans(),
    k_dim=st.integers(1, 24),
    n_dim=st.integers(1, 24),
    seed=st.integers(0, 2**16),
)
def test_unstructured_is_exact(op, level, sparse, k_dim, n_dim, seed):
    rng = np.random.default_rng(seed)
    if op == "matmul":
        w = _weight(rng, n_dim, k_dim)  # stored [N, K] behind a Transpose

        def build(weight):
            return matmul_model(weight, ("batch",), weight_transposed=True)

        x_build, x_other = (2, k_dim), (5, k_dim)
    elif op == "gemm":
        w = _weight(rng, n_dim, k_dim)

        def build(weight):
            return gemm_model(weight, None, trans_b=1)

        x_build, x_other = (2, k_dim), (5, k_dim)
    else:
        w = _weight(rng, n_dim, k_dim, 3, 3)

        def build(weight):
            return conv_model(
                weight, _weight(np.random.default_rng(1), n_dim), pads=(1, 1, 1, 1), hw=(5, 5)
            )

        x_build, x_other = (2, k_dim, 5, 5), (3, k_dim, 5, 5)
    model = build(w)
    candidate = only_candidate(model, {"x": x_build})
    layout = Unstructured(sparse_storage=sparse)
    options, _ = layout.options(candidate)
    (option,) = [o for o in options if o.level == level]
    pruned = solve(layout, candidate, option)
    assert (~pruned.mask).sum() == round(pruned.mask.size * level) or pruned.mask.size > 128
    out = materialized(model, layout, candidate, pruned)
    canonical = pruned.weight
    stored = canonical if op == "conv" else canonical.T.copy()
    reference = build(stored)
    for shape in (x_build, x_other):
        assert_same_outputs(out, reference, feeds_for({"x": shape}, seed))
    assert len(out.graph.sparse_initializer) == (1 if sparse else 0)
    assert sum(op_counts(out).values()) <= sum(op_counts(model).values())


def test_sparse_storage_is_smaller_and_loads_in_ort():
    rng = np.random.default_rng(0)
    w = _weight(rng, 128, 64)
    model = matmul_model(w)
    candidate = only_candidate(model, {"x": (2, 128)})
    layout = Unstructured(sparse_storage=True)
    option = next(o for o in layout.options(candidate)[0] if o.level == 0.875)
    pruned = solve(layout, candidate, option)
    out = materialized(model, layout, candidate, pruned)
    (sparse,) = out.graph.sparse_initializer
    assert list(sparse.dims) == [128, 64]
    assert sparse.values.dims[0] == int(pruned.mask.sum())
    assert out.ByteSize() < model.ByteSize() * 0.5
    assert_same_outputs(out, matmul_model(pruned.weight), feeds_for({"x": (3, 128)}))


def test_options_and_fast_on():
    rng = np.random.default_rng(0)
    candidate = only_candidate(matmul_model(_weight(rng, 4, 4)), {"x": (1, 4)})
    options, reason = Unstructured().options(candidate, [0.0, 0.5, 0.9, 1.0])
    assert [o.level for o in options] == [0.5, 0.9] and reason is None
    assert Unstructured().options(candidate, [])[0] == []
    assert Unstructured.fast_on == frozenset()
    assert option_label(options[0]) == "unstructured 50%"
    assert pytest.approx(0.5) == options[0].level
