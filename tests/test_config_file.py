"""``--config onnxprune.toml``: precedence, --print-config, bad keys and values, per-node rules."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import click
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxprune.cli import prune as prune_command
from onnxprune.config.file import NOT_IN_FILE, option_keys
from tests.cli_helpers import invoke

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "models" / "digits_mlp.onnx"
CALIB = ROOT / "calibration" / "digits_mlp"


def write(tmp_path: Path, text: str, name: str = "onnxprune.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def printed(tmp_path: Path, *args: str) -> tuple[dict, dict[str, str]]:
    """--print-config's output parsed back: (values, source per key)."""
    result = invoke(MLP, tmp_path / "out.onnx", *args, "--print-config")
    assert result.code == 0, result.stderr
    assert not (tmp_path / "out.onnx").exists()
    sources = {}
    for line in result.stdout.splitlines():
        if " = " in line and "  # " in line and not line.startswith("#"):
            key = line.split(" = ")[0]
            sources[key] = line.rsplit("# ", 1)[1]
    return tomllib.loads(result.stdout), sources


def test_precedence_default_then_file_then_command_line(tmp_path):
    config = write(tmp_path, 'speedup = 2.0\nthreads = 2\nmax-error = 0.5\n'
                             'shape = {input = [16, 64]}\nlayouts = ["block", "channel"]\n')
    values, sources = printed(tmp_path, "--config", config, "--threads", "1")
    assert values["threads"] == 1 and sources["threads"] == "command line"
    assert values["max-error"] == 0.5 and sources["max-error"] == f"file {config}"
    assert values["speedup"] == 2.0 and sources["speedup"] == f"file {config}"
    assert values["shape"] == ["input=16x64"]
    assert values["layouts"] == "block,channel"
    assert values["seed"] == 0 and sources["seed"] == "default"
    assert values["verify-sessions"] == 5 and sources["verify-sessions"] == "default"


def test_printed_settings_are_a_config_file(tmp_path):
    config = write(tmp_path, 'sparsity = 0.5\nlayouts = "block"\ndry-run = true\n'
                             '[[node]]\nmatch = "MatMul1"\nmax_level = 0.25\n')
    result = invoke(MLP, tmp_path / "o.onnx", "--config", config, "--seed", "7",
                    "--print-config")
    assert result.code == 0, result.stderr
    assert 'match = "MatMul1"' in result.stdout and "max_level = 0.25" in result.stdout
    again = write(tmp_path, result.stdout, "printed.toml")
    values, sources = printed(tmp_path, "--config", again)
    assert values["seed"] == 7 and values["sparsity"] == 0.5 and values["dry-run"] is True
    assert sources["seed"] == f"file {again}"
    assert values["node"] == [{"match": "MatMul1", "max_level": 0.25}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("maxerror = 0.1\n", "unknown key 'maxerror' (did you mean 'max-error'?)"),
        ("threads = \"two\"\n", "bad value for 'threads'"),
        ("dry-run = 1\n", "'dry-run' must be true or false"),
        ("shape = {input = 5}\nshape_x = 1\n", "unknown key 'shape_x'"),
        ("speedup = [\n", "not valid TOML"),
        ("config = \"other.toml\"\n", "unknown key 'config'"),
        ("[[node]]\nmatch = \"MatMul\"\nlevel = 0.5\n", "[[node]] #1: unknown key 'level'"),
        ("[[node]]\nexclude = true\n", "[[node]] #1: 'match' (a node name or regex) is required"),
        ("[[node]]\nmatch = \"(\"\n", "[[node]] #1: match is not a valid regular expression"),
        ("[[node]]\nmatch = \"a\"\nlayouts = [\"blok\"]\n", "unknown layout 'blok'"),
        ("[[node]]\nmatch = \"a\"\nmax_level = 1.5\n", "max_level must be in [0, 1)"),
        ("[[node]]\nmatch = \"a\"\nstructure_kinds = [\"rows\"]\n", "unknown structure kind"),
        ("node = 3\n", "'node' must be an array of tables"),
    ],
)
def test_bad_keys_and_values_exit_2_naming_key_and_file(tmp_path, text, message):
    config = write(tmp_path, "speedup = 2.0\n" + text if "speedup" not in text else text)
    result = invoke(MLP, tmp_path / "out.onnx", "--config", config)
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert str(config) in result.stderr and message in result.stderr, result.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_missing_config_file_exits_2(tmp_path):
    result = invoke(MLP, tmp_path / "out.onnx", "--config", tmp_path / "none.toml")
    assert result.code == 2 and "none.toml" in result.stderr


def test_every_option_of_the_command_is_a_file_key():
    """New flags need no change to the file reader: the keys come from the click command."""
    keys = option_keys(prune_command)
    for param in prune_command.params:
        if isinstance(param, click.Option) and param.name not in NOT_IN_FILE:
            long = [o[2:] for o in param.opts if o.startswith("--")]
            assert long and all(k in keys for k in long), param.name
            assert keys[param.name] is param
    assert "config" not in keys and "print-config" not in keys


def test_node_rules_are_obeyed_in_the_written_model(tmp_path):
    """Excluded, forced to another layout, capped: each shows in the written file."""
    config = write(tmp_path, f'''
sparsity = 0.5
layouts = "unstructured"
calib = "{CALIB.as_posix()}"
threads = 2
no-fidelity-bound = true
verify-sessions = 1
quiet = true

[[node]]
match = "MatMul"        # a plain name: the whole name must match (not MatMul1, MatMul2)
exclude = true

[[node]]
match = "MatMul[1]"     # a regex
layouts = ["block"]

[[node]]
match = "MatMul2"
max_level = 0.25
''')
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = invoke(MLP, out, "--config", config, "--json", report)
    assert result.code == 0, result.stderr
    data = json.loads(report.read_text())
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert set(layers) == {"MatMul1", "MatMul2"}
    assert layers["MatMul1"]["layout"] == "block"
    assert layers["MatMul2"]["layout"] == "unstructured"
    assert abs(layers["MatMul2"]["level"] - 0.25) < 1e-6
    assert data["max_relative_difference_vs_masked_dense"] < 1e-3

    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    dense = onnx.load(str(MLP))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dense_weights = {t.name: numpy_helper.to_array(t) for t in dense.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    # Excluded: the first layer still reads its original weight, untouched.
    np.testing.assert_array_equal(weights[nodes["MatMul"].input[1]], dense_weights["coefficient"])
    # Forced to block: the second layer is the block rewrite (gathered input blocks).
    assert "MatMul1" not in nodes and "MatMul1/block_gather" in nodes
    # Capped: the last layer lost a quarter of its weights, not the run-wide half.
    last = weights[nodes["MatMul2"].input[1]]
    assert abs(float(np.mean(last == 0)) - 0.25) < 0.02
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    assert session.run(None, {"input": x})[1].shape == (3, 10)


def test_the_readme_config_example_is_accepted(tmp_path):
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    config = write(tmp_path, block)
    values, sources = printed(tmp_path, "--config", config)
    assert values["speedup"] == 2.0 and sources["speedup"] == f"file {config}"
    assert [rule["match"] for rule in values["node"]] == ["/head/.*", "/fc2/MatMul"]


def test_the_metric_and_its_bound_come_from_the_file(tmp_path):
    config = write(tmp_path, 'speedup = 2.0\nmetric = "rank:1"\nmax-metric-drop = 0.1\n'
                             'max-channel-error = 0.8\n')
    values, sources = printed(tmp_path, "--config", config)
    assert values["metric"] == "rank:1" and sources["metric"] == f"file {config}"
    assert values["max-metric-drop"] == 0.1 and values["max-channel-error"] == 0.8
    bad = write(tmp_path, 'speedup = 2.0\nmetric = "nonsense"\n', "bad.toml")
    ran = invoke(MLP, tmp_path / "out.onnx", "--config", bad, "--calib", CALIB, "--quiet")
    assert ran.code == 2 and "unknown --metric 'nonsense'" in ran.stderr
