"""Coupled groups: found across residual Adds, fan-outs and gates, and cut exactly."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from onnxprune.graph.candidates import find_candidates
from onnxprune.graph.shapes import bind_input_shapes, infer_tensor_shapes
from onnxprune.structures.discover import find_structures
from onnxprune.structures.shrink import StructureCut, apply_cuts, masked_consumer_weight
from tests.models import init, make_model, tensor
from tests.structures.builders import (
    BLOCK_OPS,
    BLOCKS,
    MOVING_BLOCKS,
    residual_mlp,
    residual_net,
)


def _discover(model: onnx.ModelProto, shapes: dict):
    bound = bind_input_shapes(model, shapes)
    analysis = find_candidates(model, bound)
    tensor_shapes = infer_tensor_shapes(model, bound,
                                        required=[o for n in model.graph.node for o in n.output])
    return analysis, find_structures(model, analysis, tensor_shapes)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _check_exact(model: onnx.ModelProto, shape: tuple[int, ...], batches: tuple[int, ...],
                 seed: int, keep_fraction: float = 0.5) -> None:
    """Cut every group and every plain structure at once; compare with every consumer's removed
    rows zeroed (the masked-dense model)."""
    analysis, found = _discover(model, {"x": shape})
    assert found.groups, [b.reason for b in found.groups_blocked]
    candidates = {c.name: c for c in analysis.candidates}
    rng = np.random.default_rng(seed)
    cuts, weights = [], {}
    for structure in (*found.structures, *found.groups):
        kept = random_kept(structure, keep_fraction, rng)
        cuts.append(StructureCut(structure, kept))
        for name in structure.consumers:
            weight = weights.get(name, candidates[name].weight)
            weights[name] = masked_consumer_weight(structure, candidates[name], weight, kept)
    reference = apply_cuts(copy.deepcopy(model), [], candidates, weights)
    shrunk = apply_cuts(copy.deepcopy(model), cuts, candidates, weights)
    onnx.checker.check_model(shrunk, full_check=True)
    before = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    after = sum(int(np.prod(t.dims)) for t in shrunk.graph.initializer)
    assert after < before
    for batch in batches:
        x = rng.standard_normal((batch, *shape[1:])).astype(np.float32)
        want, got = _run(reference, x), _run(shrunk, x)
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * float(np.abs(want).max()))


def test_a_resnet_stream_is_one_group_per_stage():
    model = residual_net(8, ["bottleneck", "bottleneck", "downsample", "bottleneck"])
    _, found = _discover(model, {"x": (1, 3, 6, 6)})
    first, second = found.groups
    # the stem and the two bottlenecks' last convs write the first stream; the head of every
    # block reading it (two first convs, the downsample block's first conv and its shortcut)
    assert first.kind == "residual" and len(first.producers) == 3
    assert len(first.consumers) == 4 and len(first.couplers) == 2 and first.width == 8
    # the downsample block's two convs write the second; the last block and the head read it
    assert len(second.producers) == 3 and second.consumers[-1] == "head"
    assert {"BatchNormalization"} <= {n.op_type for n in model.graph.node
                                      if n.name in first.members}
    # the inner chains stay plain structures, around the groups
    assert len(found.structures) == 4
    _check_exact(model, (1, 3, 6, 6), batches=(1, 3), seed=0)


def test_a_conv_that_reads_and_writes_the_stream_and_a_gate_join_the_group():
    model = residual_net(6, ["single", "se", "bottleneck"])
    _, found = _discover(model, {"x": (2, 3, 6, 6)})
    (group,) = found.groups
    single = next(n.name for n in model.graph.node if n.op_type == "Add")
    adder = next(n for n in model.graph.node if n.name == single)
    writer = next(n.name for n in model.graph.node if n.output[0] == adder.input[1])
    assert writer in group.producers and writer in group.consumers
    ops = {n.op_type for n in model.graph.node if n.name in group.couplers}
    assert ops == {"Add", "Mul"}  # the residual and the excitation gate
    _check_exact(model, (2, 3, 6, 6), batches=(1, 4), seed=1)


def test_a_transformer_stream_is_a_group_unless_normalized_over_its_channels():
    _, found = _discover(residual_mlp(8, 3), {"x": (2, 3, 12)})
    (group,) = found.groups
    assert len(group.producers) == 4 and len(group.consumers) == 4
    _check_exact(residual_mlp(8, 3), (2, 3, 12), batches=(1, 5), seed=2)
    _, found = _discover(residual_mlp(8, 2, norm=True), {"x": (2, 3, 12)})
    assert not found.groups
    assert any("LayerNormalization" in b.reason and "normalizes over the channels" in b.reason
               for b in found.groups_blocked)


def test_groups_block_at_the_graph_interface_with_reasons():
    rng = np.random.default_rng(0)
    w, v = init("w", rng.standard_normal((6, 6))), init("v", rng.standard_normal((6, 6)))
    from_input = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="up"),
         helper.make_node("Add", ["h", "x"], ["r"], name="residual"),
         helper.make_node("MatMul", ["r", "v"], ["y"], name="down")],
        [tensor("x", ["b", 6])], [tensor("y", ["b", 6])], [w, v])
    _, found = _discover(from_input, {"x": (2, 6)})
    assert not found.groups
    reasons = {b.producer: b.reason for b in found.groups_blocked}
    assert reasons["up"] == "the channels come from the graph input 'x'"
    to_output = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="up"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "v"], ["y"], name="left")],
        [tensor("x", ["b", 6])], [tensor("y", ["b", 6]), tensor("r", ["b", 6])], [w, v])
    _, found = _discover(to_output, {"x": (2, 6)})
    assert {b.producer: b.reason for b in found.groups_blocked}["up"] == \
        "the channels reach the graph output 'r'"


def random_kept(structure, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A random kept set of about ``fraction`` of the channels that every segment of a group
    (producer ranges, Split pieces) keeps its share of."""
    keep = max(1, int(structure.width * fraction))
    segments = structure.segments
    counts = structure.keep_counts(keep)
    if counts is None:
        counts = structure.keep_counts(len(np.bincount(segments)))
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(segments == s), n, replace=False)
                                   for s, n in enumerate(counts)]))


def test_two_consumers_of_one_producer_are_a_fan_out_group():
    rng = np.random.default_rng(0)
    inits = [init(n, rng.standard_normal((6, 6))) for n in ("w", "v", "u")]
    forked = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="up"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "v"], ["y1"], name="left"),
         helper.make_node("MatMul", ["r", "u"], ["y2"], name="right"),
         helper.make_node("Add", ["y1", "y2"], ["y"], name="sum")],
        [tensor("x", ["b", 6])], [tensor("y", ["b", 6])], inits)
    _, found = _discover(forked, {"x": (2, 6)})
    fan_out = next(g for g in found.groups if g.producers == ("up",))
    assert fan_out.kind == "fan-out" and fan_out.consumers == ("left", "right")
    # and left + right meet at the Add that writes the output: no group there
    assert "graph output" in {b.producer: b.reason for b in found.groups_blocked}["left"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=4),
       ops=st.lists(st.sampled_from(BLOCK_OPS), max_size=3), width=st.integers(2, 10),
       seed=st.integers(0, 1000), keep=st.floats(0.05, 0.95))
def test_random_residual_nets_cut_equal_masked_dense(blocks, ops, width, seed, keep):
    model = residual_net(width, blocks, ops, seed=seed)
    _check_exact(model, (2, 3, 6, 6), batches=(1, 3), seed=seed, keep_fraction=keep)


def test_c2f_and_sppf_are_groups_with_moved_indices():
    model = residual_net(4, ["c2f", "sppf", "c2f-plain", "split-add"], hidden=3)
    _, found = _discover(model, {"x": (2, 3, 6, 6)})
    moved = [g for g in found.groups if g.kind == "concat"]
    c2f = next(g for g in moved if len(g.splits) == 1 and len(g.producers) == 2)
    assert c2f.width == 6  # cv1's 2·hidden outputs; the bottleneck writes the second half again
    (edit,) = c2f.splits
    assert edit.pieces == ((0, 1, 2), (3, 4, 5))
    cv2 = c2f.consumers[-1]
    assert tuple(c2f.map_of(cv2)) == (0, 1, 2, 3, 4, 5, 3, 4, 5)
    sppf = next(g for g in moved if not g.splits and len(g.producers) == 1)
    assert tuple(sppf.map_of(sppf.consumer)) == (0, 1, 2) * 3
    plain = next(g for g in moved if len(g.splits) == 1 and len(g.producers) == 2
                 and g is not c2f)
    assert plain.width == 9  # y0, y1 and the bottleneck's own output: no residual ties them
    split_add = next(g for g in found.groups if g.kind == "concat" and g.width == 8)
    assert len(split_add.producers) == 3  # the stream, the Split's producer, Conv(y1)
    assert all(np.bincount(g.segments).min() >= 1 for g in moved)
    _check_exact(model, (2, 3, 6, 6), batches=(1, 3), seed=0, keep_fraction=0.5)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.sampled_from(BLOCKS + MOVING_BLOCKS), min_size=1, max_size=4),
       ops=st.lists(st.sampled_from(BLOCK_OPS), max_size=3), width=st.integers(2, 8),
       hidden=st.integers(2, 6), seed=st.integers(0, 1000), keep=st.floats(0.05, 0.95))
def test_random_concat_split_nets_cut_equal_masked_dense(blocks, ops, width, hidden, seed, keep):
    model = residual_net(width, blocks, ops, seed=seed, hidden=hidden)
    _, found = _discover(model, {"x": (2, 3, 6, 6)})
    if not found.groups:
        return  # nothing coupled: the plain structures are tested elsewhere
    _check_exact(model, (2, 3, 6, 6), batches=(1, 3), seed=seed, keep_fraction=keep)
