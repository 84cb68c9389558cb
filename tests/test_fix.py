"""--fix end to end: a model whose weights sit in If branches on a sample-rate input.

With the rate pinned, the If is folded and the taken branch's weights are pruned (exact against the
masked-dense folded model on random inputs, checker, ORT load, the pinned input gone). Without it,
the refusal names the input to pin; a bad --fix and a Loop are clear exit-2 refusals. Speed is
never asserted: runs use the uniform --sparsity mode, one short verification session or --dry-run.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxprune import PruneConfig
from onnxprune.cli import main
from onnxprune.common.errors import UserError
from onnxprune.graph.fold import apply_fixes
from onnxprune.pipeline.prune import prune
from tests.graph import subgraph_models as sm

# recover=False: these tests check the rewrite against an independently built masked-dense model.
QUICK = {"verify_sessions": 1, "verify_seconds": 0.3, "recover": False}


@pytest.fixture
def cli(capsys):
    """Run the CLI in this process (a subprocess costs seconds of imports): exit code and output."""

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        logger = logging.getLogger("onnxprune")
        saved = logger.handlers[:], logger.level, logger.propagate
        code = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:  # the CLI points the logger at this test's captured stderr: put it back
            logger.handlers[:], logger.level, logger.propagate = saved
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return run


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _session(path_or_model) -> ort.InferenceSession:
    data = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) \
        else str(path_or_model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _trans_b(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "transB"), 0)


def _calib(tmp_path: Path, shape: tuple[int, ...]) -> Path:
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for index in range(4):
        np.savez(folder / f"batch{index}.npz", x=rng.standard_normal(shape).astype(np.float32),
                 sr=np.array(16000, dtype=np.int64))  # the pinned input may stay in the data
    return folder


@pytest.mark.parametrize(("build", "x_shape", "branch_nodes"), [
    (sm.matmul_switch, (16, 16), {"wide_fc1", "wide_fc2"}),
    (sm.conv_switch, (16, 3, 8, 8), {"wide_conv1", "wide_conv2"}),
])
def test_fix_folds_the_if_and_prunes_the_branch_weights(tmp_path, build, x_shape, branch_nodes):
    src, out = _save(build(), tmp_path / "in.onnx"), tmp_path / "out.onnx"
    config = PruneConfig(sparsity=0.5, layouts=("unstructured",), fix={"sr": 16000},
                         calib_dir=_calib(tmp_path, x_shape), fidelity_bound=False, **QUICK)
    report = prune(src, out, config)
    assert report.written
    pruned_layers = {layer.name: layer for layer in report.layers}
    assert branch_nodes <= set(pruned_layers)
    for name in branch_nodes:
        layer = pruned_layers[name]
        assert layer.weights_after <= 0.55 * layer.weights_before
    assert any("removed from the written model" in note for note in report.notes)
    assert report.exactness is not None and report.exactness < 1e-4

    written = onnx.load(str(out))
    onnx.checker.check_model(written, full_check=True)
    assert [i.name for i in written.graph.input] == ["x"]
    assert "If" not in {n.op_type for n in written.graph.node}
    # Masked-dense reference, built independently: the folded input model carrying the written
    # (masked, reconstructed) weights runs exactly like the written model on random inputs.
    reference = apply_fixes(onnx.load(str(src)), {"sr": 16000}).model
    weights = {t.name: t for t in written.graph.initializer}
    new_weight = {n.name: (weights[n.input[1]], _trans_b(n)) for n in written.graph.node
                  if n.op_type in ("MatMul", "Conv", "Gemm")}
    by_name = {t.name: t for t in reference.graph.initializer}
    for node in reference.graph.node:
        if node.name in new_weight:
            tensor, trans_b = new_weight[node.name]
            value = numpy_helper.to_array(tensor)
            value = value.T if trans_b != _trans_b(node) else value
            by_name[node.input[1]].CopyFrom(numpy_helper.from_array(value, node.input[1]))
    x = np.random.default_rng(5).standard_normal((3, *x_shape[1:])).astype(np.float32)
    got = _session(out).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, _session(reference).run(None, {"x": x})[0], atol=1e-5)
    # ... and the weights really are pruned: about half of each branch weight is zero.
    for node in written.graph.node:
        if node.name in branch_nodes:
            w = numpy_helper.to_array(weights[node.input[1]])
            assert 0.4 < float(np.mean(w == 0)) < 0.6
    # A stale feed of the pinned input fails loudly instead of being ignored.
    with pytest.raises(Exception, match="sr"):
        _session(out).run(None, {"x": x, "sr": np.array(8000, dtype=np.int64)})


def test_fix_with_a_structured_layout_is_exact(tmp_path):
    src, out = _save(sm.matmul_switch(), tmp_path / "in.onnx"), tmp_path / "out.onnx"
    report = prune(src, out, PruneConfig(sparsity=0.5, layouts=("channel",), fix={"sr": "16000"},
                                         shapes={"x": (8, 16)}, **QUICK))
    assert {"wide_fc1", "wide_fc2"} <= {layer.name for layer in report.layers}
    assert report.exactness is not None and report.exactness < 1e-4
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert _session(out).run(None, {"x": np.ones((5, 16), np.float32)})[0].shape == (5, 4)


def test_without_fix_the_refusal_names_the_input_to_pin(tmp_path, cli):
    src = _save(sm.matmul_switch(head=False), tmp_path / "in.onnx")
    with pytest.raises(UserError, match=r"If node 'rate_switch'.*--fix sr=VALUE"):
        prune(src, tmp_path / "out.onnx", PruneConfig(sparsity=0.5, layouts=("channel",)))
    assert not (tmp_path / "out.onnx").exists()
    result = cli("inspect", str(src), "--json", "-")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["candidates"] == []
    assert {s["node"] for s in data["skipped"]} == {"wide_fc1", "wide_fc2", "narrow_fc"}
    assert all("pin it with --fix sr=VALUE" in s["reason"] for s in data["skipped"])


def test_cli_fix_on_prune_and_inspect(tmp_path, cli):
    src = _save(sm.matmul_switch(head=False), tmp_path / "in.onnx")
    result = cli(str(src), str(tmp_path / "out.onnx"), "--sparsity", "0.5", "--layouts",
                  "channel", "--fix", "sr=16000", "--dry-run", "--json", "-", "--quiet")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert any("'sr' is pinned and removed" in note for note in data["notes"])
    result = cli("inspect", str(src), "--fix", "sr=8000", "--json", "-")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [c["name"] for c in data["candidates"]] == ["narrow_fc"]
    assert data["fixed"]["removed_inputs"] == ["sr"]
    assert data["fixed"]["folded_ifs"] == [{"node": "rate_switch", "branch": "else",
                                           "nodes_inlined": 1}]


@pytest.mark.parametrize(("command", "fix", "message"), [
    ("prune", "rate=16000", "--fix names 'rate', which is not an input"),
    ("inspect", "sr=fast", "bad --fix sr='fast'"),
    ("profile", "sr=1,2", "do not fit input 'sr'"),
])
def test_bad_fix_exits_2_naming_it(tmp_path, cli, command, fix, message):
    src = _save(sm.matmul_switch(), tmp_path / "in.onnx")
    args = {"prune": [str(src), str(tmp_path / "out.onnx"), "--sparsity", "0.5", "--layouts",
                      "channel"], "inspect": [str(src)], "profile": [str(src)]}[command]
    if command != "prune":
        args = [command, *args]
    result = cli(*args, "--fix", fix)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_fix_and_shape_on_one_input_is_refused():
    with pytest.raises(UserError, match="both --fix and --shape"):
        PruneConfig(sparsity=0.5, fix={"sr": 1}, shapes={"sr": (1,)})


def test_loop_model_is_declined_with_the_reason(tmp_path, cli):
    src = _save(sm.loop_model(), tmp_path / "loop.onnx")
    result = cli(str(src), str(tmp_path / "out.onnx"), "--sparsity", "0.5", "--layouts",
                  "channel")
    assert result.returncode == 2, result.stderr
    text = " ".join(result.stderr.split())
    assert "step_fc" in text and "Loop node 'recur'" in text and "once per iteration" in text
    assert not (tmp_path / "out.onnx").exists()


def test_bench_pins_a_with_the_same_fix(tmp_path, cli):
    src = _save(sm.matmul_switch(), tmp_path / "in.onnx")
    out = _save(apply_fixes(sm.matmul_switch(), {"sr": 16000}).model, tmp_path / "out.onnx")
    result = cli("bench", str(src), str(out), "--seconds", "0.2", "--sessions", "1")
    assert result.returncode == 2 and "pass the same --fix NAME=VALUE" in result.stderr
    result = cli("bench", str(src), str(out), "--fix", "sr=16000", "--seconds", "0.2",
                 "--sessions", "1", "--json", "-")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["inputs"] == {"x": [1, 16]}
