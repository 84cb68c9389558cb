"""Isolated one-node models for timing: shapes, structure, and that ORT runs them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.layouts.base import DEFAULT_LEVELS
from onnxprune.layouts.isolate import dense_isolated_model, isolated_model
from onnxprune.layouts.registry import LAYOUTS, get_layout
from tests.layouts.common import feeds_for, only_candidate, op_counts, run
from tests.models import conv_model, gemm_model, matmul_model, shared_weight_model

RNG = np.random.default_rng(0)


def _weight(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


CASES = {
    "matmul3d": (lambda: matmul_model(_weight(64, 32), ("batch", "seq")), {"x": (2, 5, 64)}),
    "gemm_trans_a": (
        lambda: gemm_model(_weight(32, 64), _weight(32), trans_a=1, trans_b=1, alpha=0.5),
        {"x": (64, 3)},
    ),
    "conv": (
        lambda: conv_model(_weight(16, 16, 1, 1), _weight(16), hw=(6, 6)),
        {"x": (2, 16, 6, 6)},
    ),
}


def _shape(info: onnx.ValueInfoProto) -> tuple[int, ...]:
    return tuple(d.dim_value for d in info.type.tensor_type.shape.dim)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("layout_name", list(LAYOUTS))
def test_every_option_family_builds_and_runs(case, layout_name):
    build, shapes = CASES[case]
    candidate = only_candidate(build(), shapes)
    site = candidate.sites[0]
    dense = dense_isolated_model(candidate)
    assert _shape(dense.graph.input[0]) == site.input_shape
    (want,) = run(dense, feeds_for({site.activation: site.input_shape}))
    assert want.shape == site.output_shape

    options, _ = get_layout(layout_name).options(candidate, DEFAULT_LEVELS[::3])
    for option in options[:: max(1, len(options) // 3)]:
        model = isolated_model(candidate, option, seed=1)
        assert _shape(model.graph.input[0]) == site.input_shape
        (got,) = run(model, feeds_for({site.activation: site.input_shape}))
        assert got.shape == site.output_shape
        ops = op_counts(model)
        if layout_name in ("block", "channel"):
            assert ops["Gather"] == 1
        else:
            assert ops == op_counts(dense)


def test_dense_isolated_is_canonical_and_one_node():
    gemm = only_candidate(CASES["gemm_trans_a"][0](), CASES["gemm_trans_a"][1])
    (node,) = dense_isolated_model(gemm).graph.node
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == "Gemm" and attrs == {"transA": 1} and len(node.input) == 3
    conv = only_candidate(
        conv_model(_weight(8, 4, 3, 3), None, (2, 2), (1, 0, 1, 0), (1, 2), hw=(9, 9)),
        {"x": (1, 4, 9, 9)},
    )
    (node,) = dense_isolated_model(conv).graph.node
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["strides"] == [2, 2] and attrs["pads"] == [1, 0, 1, 0]
    assert attrs["dilations"] == [1, 2]


def test_site_index_picks_the_site_shape():
    candidate = only_candidate(
        shared_weight_model(_weight(32, 16)), {"x1": (2, 32), "x2": (2, 3, 32)}
    )
    shapes = {_shape(dense_isolated_model(candidate, i).graph.input[0]) for i in range(2)}
    assert shapes == {(2, 32), (2, 3, 32)}


def test_matmul_bias_is_kept_as_an_add():
    import dataclasses

    candidate = only_candidate(CASES["matmul3d"][0](), CASES["matmul3d"][1])
    with_bias = dataclasses.replace(candidate, bias=_weight(32))
    option = get_layout("block").options(with_bias)[0][0]
    model = isolated_model(with_bias, option)
    assert op_counts(model)["Add"] == 1
    assert op_counts(dense_isolated_model(with_bias))["Add"] == 1
