"""The CLI contract: subcommands, exit codes, one-line errors, nothing written on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "models" / "digits_mlp.onnx"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, pattern: str) -> None:
    assert result.returncode == code, result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert pattern in result.stderr, result.stderr


def test_help_lists_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("prune", "inspect", "profile", "bench"):
        assert command in result.stdout


def test_inspect_json(tmp_path):
    out = tmp_path / "inspect.json"
    result = run("inspect", str(MLP), "--shape", "input=16x64", "--json", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["inputs"] == {"input": [16, 64]}
    assert [c["weight_shape"] for c in data["candidates"]] == [[256, 128], [64, 256], [128, 10]]
    assert "MatMul1" in result.stdout
    # The two hidden layers are structures; the last one's reason is printed and in the JSON.
    assert [(s["producers"], s["consumer"]) for s in data["structures"]] == [
        (["MatMul"], "MatMul1"), (["MatMul1"], "MatMul2")]
    assert "Channel structures (2)" in result.stdout
    assert data["structures_blocked"][0]["producer"] == "MatMul2"
    assert data["structures_blocked"][0]["reason"] in " ".join(result.stdout.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("inspect", "missing.onnx"), "no such file"),
        (("inspect", str(MLP), "--shape", "nope=1x64"), "not an input"),
        (("inspect", str(MLP), "--shape", "input=1xq"), "bad --shape"),
        (("inspect", str(MLP), "--shape", "input=2x65"), "fixed to 64"),
        (("inspect", str(MLP), "--provider", "warp"), "not available"),
        (("bench", str(MLP), "missing.onnx"), "no such file"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message):
    assert_one_line_error(run(*args), 2, message)


def test_not_onnx_and_truncated(tmp_path):
    text = tmp_path / "text.onnx"
    text.write_text("hello\n" * 50)
    assert_one_line_error(run("inspect", str(text)), 2, "not a valid ONNX model")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(MLP.read_bytes()[:5000])
    assert_one_line_error(run("inspect", str(cut)), 2, "not a valid ONNX model")


def test_prune_refuses_output_equal_to_input(tmp_path):
    copy = tmp_path / "m.onnx"
    copy.write_bytes(MLP.read_bytes())
    before = copy.read_bytes()
    result = run(str(copy), str(copy), "--sparsity", "0.5", "--layouts", "unstructured")
    assert_one_line_error(result, 2, "output path is the input path")
    assert copy.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--speedup", "0.5"), "--speedup must be greater than 1"),
        (("--speedup", "2", "--sparsity", "0.5"), "exactly one of"),
        (("--nm", "4:2"), "0 < N < M"),
        (("--nm", "two:four"), "bad --nm"),
        (("--sparsity", "0.5", "--layouts", "blocky"), "unknown layout"),
        (("--speedup", "2", "--calib", "no_such_dir"), "calibration folder not found"),
        (("--speedup", "2", "--exclude", "("), "--exclude"),
    ],
)
def test_prune_bad_options_exit_2_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "out.onnx"
    result = run(str(MLP), str(out), *args)
    assert_one_line_error(result, 2, message)
    assert not out.exists()
