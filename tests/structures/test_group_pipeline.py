"""Coupled groups through the pipeline: offered at their first consumer, solved jointly, timed as
one subgraph, written exactly (against the masked-dense model of every consumer's weights)."""

from __future__ import annotations

import onnx
import pytest

from onnxprune import PruneConfig
from onnxprune.pipeline.prune import prune
from tests.fuzz.graphs import random_feed
from tests.fuzz.reference import (
    PRUNE_BATCH,
    RecordingTiming,
    assert_matches_masked_dense,
    masked_dense,
)
from tests.fuzz.test_fuzz import write_calib
from tests.structures.builders import residual_net


@pytest.mark.parametrize("blocks", [("bottleneck", "bottleneck"), ("downsample", "se",
                                                                    "single"),
                                    ("c2f", "sppf", "split-add")])
def test_a_residual_stream_is_pruned_as_one_group_and_written_exactly(blocks, tmp_path):
    model = residual_net(32, blocks, ops=("relu",), hidden=16, seed=3)
    source = tmp_path / "in.onnx"
    onnx.save(model, source)
    shapes = {"x": (PRUNE_BATCH, 3, 6, 6)}
    calib = write_calib(tmp_path / "calib", model, shapes, seed=5)
    timing = RecordingTiming(7)
    config = PruneConfig(sparsity=0.5, layouts=("structure",), calib_dir=calib, shapes=shapes,
                         threads=1, verify_sessions=1, verify_seconds=0.0, verify_rounds=2,
                         max_error=10.0, max_channel_error=1e9, recover=False)
    report = prune(source, tmp_path / "out.onnx", config, timing=timing)
    groups = [s for s in report.structures if s["kind"] in ("residual", "fan-out", "concat")]
    assert groups, report.structures_blocked
    stream = groups[0]
    layers = {layer.name: layer for layer in report.layers}
    decided = layers[stream["consumers"][0]].option
    assert decided.layout == "structure", "the stream was not pruned"
    for name in stream["consumers"][1:]:  # every consumer loses the same channels
        assert layers[name].option == decided
        assert layers[name].weights_after < layers[name].weights_before
    pruned = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(pruned, full_check=True)
    weights = timing.measured[pruned.SerializeToString()]
    reference = masked_dense(model, shapes, weights)
    assert_matches_masked_dense(pruned, reference, [
        random_feed(model, shapes, batch, 40 + batch) for batch in (1, 3)])
    widths = {d for t in pruned.graph.initializer for d in t.dims[:2]}
    assert decided.param("keep") in widths
