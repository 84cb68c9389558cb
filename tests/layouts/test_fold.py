"""fold_channel_restores: shrinking the consumer instead of restoring a channel-pruned output."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxprune.graph.fold_restores import fold_channel_restores
from onnxprune.layouts.base import LayoutOption
from onnxprune.layouts.channel import Channel
from tests.layouts.common import (
    SETTINGS,
    assert_same_outputs,
    candidates,
    feeds_for,
    materialized,
    op_counts,
    solve,
)
from tests.models import conv_chain_model, two_layer_model


def _weight(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _prune(model, shapes, name, keep, folded_expected):
    candidate = candidates(model, shapes)[name]
    option = LayoutOption("channel", 1 - keep / candidate.output_dim, (("keep", keep),))
    pruned = solve(Channel(), candidate, option)
    counts = []
    plain = materialized(model, Channel(), candidate, pruned)
    folded = materialized(
        model, Channel(), candidate, pruned, post=lambda g: counts.append(fold_channel_restores(g))
    )
    if callable(folded_expected):
        folded_expected = folded_expected(pruned)
    assert counts == [folded_expected]
    return pruned, plain, folded


@SETTINGS
@given(
    activation=st.sampled_from([None, "Relu", "Sigmoid", "LeakyRelu", "Tanh", "Gelu5"]),
    k_dim=st.integers(1, 12),
    hidden=st.integers(2, 16),
    n_dim=st.integers(1, 12),
    keep_share=st.floats(0.1, 0.9),
    with_b2=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_mlp_fold_is_exact(activation, k_dim, hidden, n_dim, keep_share, with_b2, seed):
    rng = np.random.default_rng(seed)
    w1, b1, w2 = _weight(rng, k_dim, hidden), _weight(rng, hidden), _weight(rng, hidden, n_dim)
    b2 = _weight(rng, n_dim) if with_b2 else None
    model = two_layer_model(w1, b1, w2, activation, b2=b2)
    keep = min(max(round(keep_share * hidden), 1), hidden - 1)
    pruned, plain, folded = _prune(model, {"x": (2, k_dim)}, "fc1", keep, 1)
    reference = two_layer_model(pruned.weight, b1, w2, activation, b2=b2)
    for batch in (2, 5):
        feeds = feeds_for({"x": (batch, k_dim)}, seed)
        assert_same_outputs(folded, reference, feeds)
        assert_same_outputs(plain, reference, feeds)
    assert "Gather" not in op_counts(folded)
    sizes = {t.name: tuple(t.dims) for t in folded.graph.initializer}
    assert (keep, n_dim) in sizes.values() and (k_dim, keep) in sizes.values()


@pytest.mark.parametrize("activation", ["Relu", "Gelu5"])
def test_residual_branch_keeps_the_restore(activation):
    rng = np.random.default_rng(0)
    w1, b1, w2 = _weight(rng, 6, 8), _weight(rng, 8), _weight(rng, 8, 8)
    model = two_layer_model(w1, b1, w2, activation, residual=True)
    pruned, plain, folded = _prune(model, {"x": (2, 6)}, "fc1", 3, 0)
    reference = two_layer_model(pruned.weight, b1, w2, activation, residual=True)
    assert_same_outputs(folded, reference, feeds_for({"x": (4, 6)}))
    assert op_counts(folded)["Gather"] == 1


def test_two_pruned_layers_fold_into_each_other():
    rng = np.random.default_rng(1)
    w1, b1, w2 = _weight(rng, 6, 8), _weight(rng, 8), _weight(rng, 8, 7)
    model = two_layer_model(w1, b1, w2, "Relu", b2=_weight(rng, 7))
    shapes = {"x": (2, 6)}
    found = candidates(model, shapes)
    first = solve(Channel(), found["fc1"], LayoutOption("channel", 0.5, (("keep", 4),)))
    second = solve(Channel(), found["fc2"], LayoutOption("channel", 4 / 7, (("keep", 3),)))
    import onnx_graphsurgeon as gs

    from onnxprune.graph.load import stamp_ir_version

    graph = gs.import_onnx(model)
    Channel().materialize(graph, found["fc1"], first)
    Channel().materialize(graph, found["fc2"], second)
    assert fold_channel_restores(graph) == 1  # fc2's output goes to a graph output via Identity
    graph.cleanup().toposort()
    out = stamp_ir_version(gs.export_onnx(graph))
    reference = two_layer_model(
        first.weight, b1, second.weight, "Relu", b2=np.asarray(graph.tensors()["b2"].values)
    )
    assert_same_outputs(out, reference, feeds_for({"x": (3, 6)}))
    assert op_counts(out)["Gather"] == 1


@SETTINGS
@given(
    negative_bias=st.booleans(),
    pad2=st.integers(0, 1),
    with_b2=st.booleans(),
    activation=st.sampled_from([None, "Relu"]),
    seed=st.integers(0, 2**16),
)
def test_conv_fold_is_exact_and_refuses_padding_with_a_carried_constant(
    negative_bias, pad2, with_b2, activation, seed
):
    rng = np.random.default_rng(seed)
    w1, w2 = _weight(rng, 6, 3, 3, 3), _weight(rng, 5, 6, 3, 3)
    b1 = -np.abs(_weight(rng, 6)) - 0.1 if negative_bias else _weight(rng, 6)
    b2 = _weight(rng, 5) if with_b2 else None

    def build(w):
        return conv_chain_model(w, b1, w2, b2, activation, pads2=(pad2,) * 4)

    def expected(pruned) -> int:
        carried = b1[~pruned.mask.any(axis=(1, 2, 3))]
        if activation == "Relu":
            carried = np.maximum(carried, 0)
        return 1 if pad2 == 0 or not carried.any() else 0

    pruned, plain, folded = _prune(build(w1), {"x": (2, 3, 6, 6)}, "conv1", 2, expected)
    reference = build(pruned.weight)
    for batch in (2, 3):
        assert_same_outputs(folded, reference, feeds_for({"x": (batch, 3, 6, 6)}, seed))
    assert op_counts(folded)["Gather"] == 1 - expected(pruned)


def test_conv_batchnorm_relu_conv_folds():
    from onnx import helper

    from tests.models import init, make_model, tensor

    rng = np.random.default_rng(5)
    w1, b1, w2 = _weight(rng, 6, 3, 3, 3), _weight(rng, 6), _weight(rng, 4, 6, 1, 1)
    scale, shift, mean = _weight(rng, 6), _weight(rng, 6), _weight(rng, 6)
    var = np.abs(_weight(rng, 6)) + 0.5

    def build(w):
        nodes = [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
            helper.make_node("BatchNormalization", ["c1", "s", "t", "m", "v"], ["bn"], name="bn"),
            helper.make_node("Relu", ["bn"], ["h"], name="act"),
            helper.make_node("Conv", ["h", "w2"], ["y"], name="conv2"),
        ]
        inits = [
            init(n, a)
            for n, a in (
                ("w1", w),
                ("b1", b1),
                ("w2", w2),
                ("s", scale),
                ("t", shift),
                ("m", mean),
                ("v", var),
            )
        ]
        return make_model(
            nodes, [tensor("x", ["batch", 3, 5, 5])], [tensor("y", ["batch", 4, 5, 5])], inits
        )

    pruned, plain, folded = _prune(build(w1), {"x": (1, 3, 5, 5)}, "conv1", 3, 1)
    assert_same_outputs(folded, build(pruned.weight), feeds_for({"x": (2, 3, 5, 5)}))
    bn = next(n for n in folded.graph.node if n.op_type == "BatchNormalization")
    sizes = {t.name: tuple(t.dims) for t in folded.graph.initializer}
    assert sizes[bn.input[1]] == (3,)
