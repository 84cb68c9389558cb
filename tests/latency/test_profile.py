"""Tests of onnxprune/latency/profile.py: mapping profiler kernels back to graph nodes."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest
from onnx import helper

from onnxprune.common.runtime import RuntimeConfig
from onnxprune.graph.candidates import ensure_node_names, find_candidates
from onnxprune.graph.load import load_model
from onnxprune.graph.shapes import bind_input_shapes
from onnxprune.latency.profile import ModelProfile, map_kernels, name_variants, profile_model
from tests.latency.builders import convnet, mlp

RUNTIME = RuntimeConfig(threads=1)
MODELS = Path(__file__).resolve().parents[2] / "models"
SHIPPED = sorted(MODELS.glob("*.onnx"))


@pytest.mark.parametrize(
    ("kernel", "original"),
    [
        ("fc0_mm", "fc0_mm"),
        ("fused fc0_mm", "fc0_mm"),
        ("fc0_mm/MatMulAddFusion", "fc0_mm"),
        ("fused fc0_mm/MatMulAddFusion", "fc0_mm"),
        ("node_matmul/MatMulScaleFusion/", "node_matmul"),
    ],
)
def test_name_variants_strip_fusion_decorations(kernel, original):
    assert original in name_variants(kernel)


def _assert_disjoint(profile: ModelProfile) -> None:
    seen: set[str] = set()
    for kernel in profile.kernels:
        assert not seen & set(kernel.nodes), f"{kernel.name} re-covers {seen & set(kernel.nodes)}"
        seen |= set(kernel.nodes)


def test_matmul_add_fusion_maps_to_the_original_names():
    model = mlp()
    bound = bind_input_shapes(model, {"x": (4, 16)})
    profile = profile_model(model, bound, RUNTIME, runs=3, inflation_s=0.0)
    fused = [k for k in profile.kernels if k.name not in {n.name for n in model.graph.node}]
    assert fused, "ORT fused nothing: the test no longer exercises the mapping"
    for i in range(4):
        assert f"fc{i}_mm" in profile.node_times
        kernel = next(k for k in profile.kernels if f"fc{i}_mm" in k.nodes)
        # The fused bias-add and activation are covered by the same kernel.
        assert {f"fc{i}_add", f"fc{i}_relu"} <= set(kernel.nodes)
    _assert_disjoint(profile)
    names = [f"fc{i}_mm" for i in range(4)]
    assert profile.base_time(names) == pytest.approx(
        max(profile.total_s - profile.nodes_time(names), 0.0)
    )
    assert profile.total_s > 0 and profile.runs == 3 * 3  # runs in each of 3 fresh sessions
    assert ModelProfile.from_json(profile.to_json()) == profile


def test_conv_relu_nchwc_maps_to_the_conv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = convnet()
    bound = bind_input_shapes(model, {"x": (1, 4, 8, 8)})
    profile = profile_model(model, bound, RUNTIME, runs=3, inflation_s=0.0)
    assert {"conv0", "conv1"} <= set(profile.node_times)
    _assert_disjoint(profile)
    assert os.listdir(tmp_path) == []  # the profile JSON never lands in the cwd


def test_structural_cover_without_name_match():
    """A fusion named without its originals (SkipLayerNormalization-like) and NCHWc renames."""
    original = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("Add", ["r", "y"], ["s"], name="add"),
            helper.make_node("LayerNormalization", ["s", "g", "b"], ["out"], name="ln"),
        ],
        "orig",
        [],
        [],
    )
    optimized = helper.make_graph(
        [
            helper.make_node("ReorderInput", ["x"], ["t0"], name="ReorderInput"),
            helper.make_node("Conv", ["t0", "w2"], ["t1"], name="r_nchwc"),
            helper.make_node("ReorderOutput", ["t1"], ["r"], name="ReorderOutput"),
            helper.make_node(
                "SkipLayerNormalization",
                ["r", "y", "g", "b"],
                ["out"],
                name="SkipLayerNormalization",
            ),
        ],
        "opt",
        [],
        [],
    )
    kernels = {
        "ReorderInput": ("ReorderInput", "cpu"),
        "r_nchwc": ("Conv", "cpu"),
        "ReorderOutput": ("ReorderOutput", "cpu"),
        "SkipLayerNormalization": ("SkipLayerNormalization", "cpu"),
    }
    covers = map_kernels(helper.make_model(original), helper.make_model(optimized), kernels)
    assert set(covers["r_nchwc"]) == {"conv", "relu"}
    assert set(covers["SkipLayerNormalization"]) == {"add", "ln"}
    assert covers["ReorderInput"] == () and covers["ReorderOutput"] == ()
    # Without the optimized graph only the name rules apply (rule 4 is one).
    by_name = map_kernels(helper.make_model(original), None, kernels)
    assert set(by_name["r_nchwc"]) == {"conv", "relu"}
    assert by_name["SkipLayerNormalization"] == ()


def test_unnamed_nodes_are_profiled_under_ensure_node_names_names():
    model = mlp()
    for node in model.graph.node:
        node.name = ""
    bound = bind_input_shapes(model, {"x": (1, 16)})
    profile = profile_model(model, bound, RUNTIME, runs=2, inflation_s=0.0)
    named = ensure_node_names(onnx.ModelProto.FromString(model.SerializeToString()))
    matmuls = [n.name for n in named.graph.node if n.op_type == "MatMul"]
    assert set(matmuls) <= set(profile.node_times)


@pytest.mark.skipif(not SHIPPED, reason="no shipped models in models/*.onnx")
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_candidate_of_a_shipped_model_is_mapped(path):
    model = ensure_node_names(load_model(path))
    bound = bind_input_shapes(model, {})
    analysis = find_candidates(model, bound)
    profile = profile_model(model, bound, RuntimeConfig(threads=2), runs=3, inflation_s=0.0)
    nodes = [n for c in analysis.candidates for n in c.node_names]
    assert nodes
    missing = [n for n in nodes if n not in profile.node_times]
    assert not missing, f"profiler kernels not mapped to candidates {missing}"
    _assert_disjoint(profile)
    assert 0.0 <= profile.base_time(nodes) <= profile.total_s
