"""Models as the exporters write them: both torch exporters and opsets 11 to 21, each pruned.

The files in ``tests/data/exports`` come from ``models/export_test_models.py`` (torch's
TorchScript and dynamo exporters, ``onnx.version_converter``, ``onnx.helper``); their inputs are
listed in ``manifest.json``. Every file is pruned to a speedup target with the seeded synthetic
latency source (no timing) and random calibration data, then the written model must pass the
checker, load in ONNX Runtime, run at batch sizes it was not pruned at, and equal the masked-dense
model — or the run must be refused with exit code 2 or 3 and nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune import PruneConfig
from onnxprune.common.errors import TargetUnreachableError, UserError
from onnxprune.pipeline.prune import prune
from tests.fuzz.reference import RecordingTiming, assert_matches_masked_dense, masked_dense

EXPORTS = Path(__file__).resolve().parent / "data" / "exports"
MANIFEST = json.loads((EXPORTS / "manifest.json").read_text())


def _shapes(entry: dict, batch: int) -> dict[str, tuple[int, ...]]:
    return {spec["name"]: tuple(batch if d == "batch" else d for d in spec["shape"])
            for spec in entry["inputs"]}


def _feed(entry: dict, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for name, shape in _shapes(entry, batch).items():
        if name == "ids":
            feed[name] = rng.integers(0, entry["vocab"], shape).astype(np.int64)
        elif name == "mask":
            mask = np.ones(shape, np.int64)
            mask[:, -2:] = rng.integers(0, 2, (shape[0], 2))
            feed[name] = mask
        else:
            feed[name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def test_the_model_set_covers_both_exporters_every_opset_and_token_inputs():
    opsets = {entry["opset"] for entry in MANIFEST.values()}
    assert set(range(11, 22)) <= opsets
    exporters = {entry["exporter"] for entry in MANIFEST.values()}
    assert {"torch.onnx torchscript", "torch.onnx dynamo"} <= exporters
    tokens = [name for name, entry in MANIFEST.items()
              if {s["name"]: s["dtype"] for s in entry["inputs"]} == {"ids": "int64",
                                                                      "mask": "int64"}]
    assert {e["exporter"] for n, e in MANIFEST.items() if n in tokens} >= {
        "torch.onnx torchscript", "torch.onnx dynamo"}
    for name in MANIFEST:
        model = onnx.load(EXPORTS / name)
        assert model.opset_import[0].version == MANIFEST[name]["opset"] or any(
            o.domain in ("", "ai.onnx") and o.version == MANIFEST[name]["opset"]
            for o in model.opset_import)
        assert (EXPORTS / name).stat().st_size < 100_000


def _calib(entry: dict, tmp_path):
    """Four calibration batches of four samples for an exported model."""
    calib = tmp_path / "calib"
    calib.mkdir()
    for index in range(4):
        np.savez(calib / f"b{index}.npz", **_feed(entry, 4, seed=index))
    return calib


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_exported_model_is_pruned_exactly_or_refused(name, tmp_path):
    entry = MANIFEST[name]
    source = EXPORTS / name
    before = source.read_bytes()
    calib = _calib(entry, tmp_path)
    out = tmp_path / "out.onnx"
    timing = RecordingTiming(seed=7)
    config = PruneConfig(speedup=1.3, calib_dir=calib, shapes=_shapes(entry, 2), threads=1,
                         search_budget=0, verify_sessions=1, verify_rounds=2, max_error=10.0,
                         max_channel_error=1e9, recover=False,  # the rewrite vs masked-dense
                         best_effort=True)  # a synthetic miss still writes the fastest model
    try:
        report = prune(source, out, config, timing=timing)
    except (UserError, TargetUnreachableError) as exc:
        assert not out.exists() and source.read_bytes() == before
        pytest.fail(f"{name} refused: {exc}")  # every file here is prunable; see the manifest
    assert source.read_bytes() == before
    pruned = onnx.load(out)
    onnx.checker.check_model(pruned, full_check=True)
    assert {layer.option.layout for layer in report.layers} - {"dense"}, "nothing was pruned"
    weights = timing.measured[pruned.SerializeToString()]
    shapes = _shapes(entry, 1)
    reference = masked_dense(onnx.load(source), shapes, weights)
    assert_matches_masked_dense(pruned, reference,
                                [_feed(entry, batch, seed=50 + batch) for batch in (1, 3)])


@pytest.mark.parametrize("name", ["encoder_ts_opset14.onnx", "encoder_ts_opset17.onnx",
                                  "encoder_dynamo_opset18.onnx"])
def test_attention_heads_of_both_exporters_are_found_and_pruned_exactly(name, tmp_path):
    """The TorchScript exporter reads each projection's batch and length with ``Shape`` nodes and
    builds the head-merging target from ``Shape(x)[2]`` at run time; before, its heads were
    declined ("is read by 3 nodes"). Now a head goes, with the run-time d_model piece replaced
    by a constant, exactly."""
    entry = MANIFEST[name]
    calib = _calib(entry, tmp_path)
    out = tmp_path / "out.onnx"
    timing = RecordingTiming(seed=3)
    report = prune(EXPORTS / name, out, PruneConfig(
        sparsity=0.5, layouts=("structure",), calib_dir=calib, shapes=_shapes(entry, 2),
        threads=1, verify_sessions=1, max_error=10.0, recover=False,  # rewrite vs masked-dense
        max_channel_error=1e9, best_effort=True), timing=timing)
    assert "heads" in {s["kind"] for s in report.structures}
    heads = next(s for s in report.structures if s["kind"] == "heads")
    chosen = {layer.name: layer.option for layer in report.layers}
    assert chosen[heads["consumer"]].layout == "structure"
    assert dict(chosen[heads["consumer"]].params)["keep"] == 1  # one of two heads kept
    pruned = onnx.load(out)
    onnx.checker.check_model(pruned, full_check=True)
    reference = masked_dense(onnx.load(EXPORTS / name), _shapes(entry, 1),
                             timing.measured[pruned.SerializeToString()])
    assert_matches_masked_dense(pruned, reference,
                                [_feed(entry, batch, seed=20 + batch) for batch in (1, 3, 5)])
