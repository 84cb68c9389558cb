"""N:M layout: options, the N:M pattern, and exactness of the masked-dense materialization."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxprune.layouts.base import to_rows
from onnxprune.layouts.nm import NM, check_nm
from onnxprune.layouts.registry import option_label
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
    groups=st.integers(1, 6),
    n_dim=st.integers(1, 20),
    pattern=st.sampled_from(range(3)),
    op=st.sampled_from(["matmul", "gemm", "conv1x1"]),
    trans_b=st.integers(0, 1),
    alpha=st.sampled_from([1.0, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_nm_is_exact_and_follows_the_pattern(groups, n_dim, pattern, op, trans_b, alpha, seed):
    rng = np.random.default_rng(seed)
    k_dim = 8 * groups
    if op == "matmul":
        w = _weight(rng, k_dim, n_dim)

        def build(weight):
            return matmul_model(weight, ("batch", "seq"))

        x_build, x_other = (2, 3, k_dim), (4, 1, k_dim)
    elif op == "gemm":
        w = _weight(rng, k_dim, n_dim)
        c = _weight(rng, n_dim)

        def build(weight):
            canonical = weight / np.float32(alpha)
            return gemm_model(canonical.T.copy() if trans_b else canonical, c, 0, trans_b, alpha)

        w = w * np.float32(alpha)  # build() divides by alpha again
        x_build, x_other = (2, k_dim), (5, k_dim)
    else:
        w = _weight(rng, n_dim, k_dim, 1, 1)

        def build(weight):
            return conv_model(weight, None, hw=(3, 4))

        x_build, x_other = (2, k_dim, 3, 4), (3, k_dim, 3, 4)
    model = build(w)
    candidate = only_candidate(model, {"x": x_build})
    layout = NM()
    options, reason = layout.options(candidate)
    assert reason is None and len(options) == 3
    option = options[pattern]
    pruned = solve(layout, candidate, option)
    n, m = option.param("n"), option.param("m")
    assert check_nm(to_rows(candidate, pruned.mask), n, m)
    assert option.level == pytest.approx(1 - n / m)
    out = materialized(model, layout, candidate, pruned)
    reference = build(pruned.weight)
    for shape in (x_build, x_other):
        assert_same_outputs(out, reference, feeds_for({"x": shape}, seed))
    assert op_counts(out) == op_counts(model)
    assert out.graph.node[-1].name in {node.name for node in model.graph.node}


def test_options_need_m_to_divide_k_and_1x1_convs():
    rng = np.random.default_rng(0)
    odd = only_candidate(matmul_model(_weight(rng, 12, 3)), {"x": (1, 12)})
    options, reason = NM().options(odd)
    assert [option_label(o) for o in options] == ["nm 2:4 50%", "nm 1:4 75%"] and reason is None
    none, reason = NM().options(only_candidate(matmul_model(_weight(rng, 6, 3)), {"x": (1, 6)}))
    assert none == [] and "K=6" in reason
    conv3 = only_candidate(conv_model(_weight(rng, 4, 8, 3, 3)), {"x": (1, 8, 8, 8)})
    assert NM().options(conv3)[0] == [] and "1x1" in NM().options(conv3)[1]
    assert NM.fast_on == frozenset({"TensorrtExecutionProvider"})
    with pytest.raises(ValueError):
        NM(patterns=[(4, 4)])
