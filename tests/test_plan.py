"""Reproducible pipelines: a saved plan re-materializes byte-identically, for its inputs only."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune import PruneConfig
from onnxprune.common.errors import UserError
from onnxprune.pipeline.plan import read_plan
from onnxprune.pipeline.prune import prune
from onnxprune.pipeline.replay import apply_plan

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
CALIB = ROOT / "calibration"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True,
                          text=True, timeout=300)


def test_speedup_run_replays_byte_identically(tmp_path):
    """The timed run's output, and two applies of its plan, are the same bytes."""
    out, plan = tmp_path / "cnn.onnx", tmp_path / "plan.json"
    config = PruneConfig(speedup=1.5, calib_dir=CALIB / "digits_cnn",
                         shapes={"input": (64, 1, 8, 8)}, threads=2, search_budget=2,
                         cache_dir=tmp_path / "cache", best_effort=True, verify_sessions=2,
                         verify_seconds=1.0, save_plan=plan)
    report = prune(MODELS / "digits_cnn.onnx", out, config)
    assert report.written and plan.exists()
    saved = read_plan(plan)
    assert saved.latency_fingerprint == report.fingerprint is not None
    assert saved.output_sha256 == _sha(out)
    assert {c.option.layout for c in saved.choices.values()} & {"structure", "block", "channel"}
    replays = []
    for name in ("a.onnx", "b.onnx"):
        result = _cli("apply", str(MODELS / "digits_cnn.onnx"), str(tmp_path / name),
                      "--plan", str(plan), "--calib", str(CALIB / "digits_cnn"), "--quiet")
        assert result.returncode == 0, result.stderr
        replays.append(_sha(tmp_path / name))
    assert replays == [_sha(out), _sha(out)]


@pytest.fixture(scope="module")
def mlp_plan(tmp_path_factory):
    """A cheap uniform run on the MLP with its plan (no target: nothing to time but the check).

    Half of every weight in blocks costs this MLP several accuracy points, which the channel
    bound refuses; replay is what is tested here, so that bound is loosened."""
    folder = tmp_path_factory.mktemp("mlp-plan")
    out, plan = folder / "mlp.onnx", folder / "plan.json"
    result = _cli(str(MODELS / "digits_mlp.onnx"), str(out), "--sparsity", "0.5", "--layouts",
                  "block", "--calib", str(CALIB / "digits_mlp"), "--threads", "1",
                  "--verify-sessions", "1", "--save-plan", str(plan), "--quiet",
                  "--max-channel-error", "2")
    assert result.returncode == 0, result.stderr
    return out, plan


def test_uniform_run_replays_through_the_api(tmp_path, mlp_plan):
    out, plan = mlp_plan
    report = apply_plan(MODELS / "digits_mlp.onnx", tmp_path / "again.onnx", plan,
                        calib_dir=CALIB / "digits_mlp")
    assert report.written and report.measured is None and report.mode == "apply"
    assert _sha(tmp_path / "again.onnx") == _sha(out)
    onnx.checker.check_model(onnx.load(str(tmp_path / "again.onnx")))


def test_a_different_model_is_refused(tmp_path, mlp_plan):
    _, plan = mlp_plan
    model = onnx.load(str(MODELS / "digits_mlp.onnx"))
    first = model.graph.initializer[0]
    first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first) * np.float32(1.01),
                                           first.name))
    changed = tmp_path / "changed.onnx"
    onnx.save(model, str(changed))
    result = _cli("apply", str(changed), str(tmp_path / "o.onnx"), "--plan", str(plan),
                  "--calib", str(CALIB / "digits_mlp"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "input model" in result.stderr and "not the one the plan" in result.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_different_or_missing_calibration_is_refused(tmp_path, mlp_plan):
    _, plan = mlp_plan
    fewer = tmp_path / "calib"
    fewer.mkdir()
    for batch in sorted((CALIB / "digits_mlp").glob("*.npz"))[:-1]:
        shutil.copy(batch, fewer / batch.name)
    result = _cli("apply", str(MODELS / "digits_mlp.onnx"), str(tmp_path / "o.onnx"),
                  "--plan", str(plan), "--calib", str(fewer))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "calibration data" in result.stderr and "not what the plan" in result.stderr
    with pytest.raises(UserError, match="pass the same --calib"):
        apply_plan(MODELS / "digits_mlp.onnx", tmp_path / "o.onnx", plan)
    assert not (tmp_path / "o.onnx").exists()


def test_a_broken_plan_is_a_user_error(tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps({"onnxprune_plan": 1, "choices": {}}))
    with pytest.raises(UserError, match="not a valid onnxprune plan"):
        apply_plan(MODELS / "digits_mlp.onnx", tmp_path / "o.onnx", bad)
    result = _cli("apply", str(MODELS / "digits_mlp.onnx"), str(tmp_path / "o.onnx"),
                  "--plan", str(tmp_path / "missing.json"))
    assert result.returncode == 2 and "no such plan file" in result.stderr
    with pytest.raises(UserError, match="is a directory"):
        apply_plan(MODELS / "digits_mlp.onnx", tmp_path, bad)


def test_a_plan_keeps_the_per_node_rules_it_was_made_with(tmp_path):
    """An excluded node stays excluded on apply: the rule is part of the plan's settings."""
    from onnxprune.config.settings import NodeOverride

    out, plan = tmp_path / "mlp.onnx", tmp_path / "plan.json"
    rule = NodeOverride(match="MatMul1", exclude=True, source="test rule")
    config = PruneConfig(sparsity=0.5, layouts=("block",), calib_dir=CALIB / "digits_mlp",
                         threads=1, verify_sessions=1, verify_seconds=0.3, overrides=(rule,),
                         save_plan=plan, max_channel_error=2.0)
    assert prune(MODELS / "digits_mlp.onnx", out, config).written
    saved = read_plan(plan)
    assert "MatMul1" not in saved.choices and saved.config["fix"] == {}
    assert saved.prune_config(CALIB / "digits_mlp", None).overrides == (rule,)
    report = apply_plan(MODELS / "digits_mlp.onnx", tmp_path / "again.onnx", plan,
                        calib_dir=CALIB / "digits_mlp")
    assert report.written and _sha(tmp_path / "again.onnx") == _sha(out)
