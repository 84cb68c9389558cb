"""The README's commands run as written, so the quick start and the Makefile recipe cannot rot.

Blocks fenced as ```` ```bash test ```` run in order as one bash script; a ```` ```make test ````
block becomes a Makefile. Both run in a scratch folder holding copies of ``models/`` and
``calibration/`` (so nothing is written into the repository), with ``onnxprune`` on PATH as this
interpreter's ``-m onnxprune`` and a scratch latency cache (``XDG_CACHE_HOME``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w+) test\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def readme_blocks(kind: str) -> list[str]:
    return [body for lang, body in FENCE.findall((ROOT / "README.md").read_text()) if lang == kind]


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A scratch folder like the repository root, and an environment with ``onnxprune``."""
    work = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "models", work / "models",
                    ignore=shutil.ignore_patterns("data", "*.py", "*.md"))
    shutil.copytree(ROOT / "calibration", work / "calibration")
    bin_dir = work / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "onnxprune", f'#!/bin/sh\nexec "{sys.executable}" -m onnxprune "$@"\n')
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "XDG_CACHE_HOME": str(work / "cache")}
    return work, env


def test_readme_has_the_marked_blocks():
    assert len(readme_blocks("bash")) >= 1 and len(readme_blocks("make")) == 1


def test_quick_start_runs_top_to_bottom(workdir):
    work, env = workdir
    script = "set -euo pipefail\n" + "\n".join(readme_blocks("bash"))
    result = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((work / "report.json").read_text())
    assert report["written"] and report["met_target"] and report["target_speedup"] == 1.5
    assert (work / "cnn_fast.onnx").stat().st_size > 0
    page = (work / "report.html").read_text()
    assert f"{report['measured_speedup']['speedup']:.2f}x" in page
    assert "Amdahl bound" in (work / "profile.html").read_text()
    assert "speedup of B over A" in result.stdout


def test_makefile_recipe_rebuilds_only_on_change_and_fails_on_exit_3(workdir):
    work, env = workdir
    (work / "Makefile").write_text(readme_blocks("make")[0])
    target = work / "build" / "cnn_fast.onnx"
    built = subprocess.run(["make"], cwd=work, env=env, capture_output=True, text=True,
                           timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    assert target.exists() and (work / "build" / "cnn_fast.html").exists()
    assert json.loads((work / "build" / "cnn_fast.json").read_text())["written"] is True

    def up_to_date() -> bool:
        question = subprocess.run(["make", "-q", "build/cnn_fast.onnx"], cwd=work, env=env)
        return question.returncode == 0

    assert up_to_date()  # nothing changed: not rebuilt
    later = target.stat().st_mtime + 10
    os.utime(work / "calibration" / "digits_cnn" / "batch_000.npz", (later, later))
    assert not up_to_date()  # new calibration data: rebuilt next time

    # A refused target (exit 3) fails the build; a model written anyway (--best-effort) is deleted.
    refusing = executable(work / "refuse.sh", '#!/bin/sh\necho written > "$2"\nexit 3\n')
    failed = subprocess.run(["make", f"ONNXPRUNE={refusing}"], cwd=work, env=env,
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0 and "Error 3" in failed.stderr
    assert not target.exists()
