"""``--html`` on the CLI: written for profile, and for prune also when the target is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "models" / "digits_mlp.onnx"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True,
                          text=True, timeout=600)


def test_profile_html_matches_its_json(tmp_path):
    page, data = tmp_path / "profile.html", tmp_path / "profile.json"
    result = run("profile", str(MLP), "--shape", "input=16x64", "--threads", "2", "--quiet",
                 "--cache-dir", str(tmp_path / "cache"), "--html", str(page), "--json", str(data))
    assert result.returncode == 0, result.stderr
    text, profile = page.read_text(), json.loads(data.read_text())
    assert f"{profile['amdahl_bound']:.2f}x" in text
    assert all(row["name"] in text for row in profile["nodes"])


def test_refused_prune_still_writes_the_page(tmp_path):
    out, page = tmp_path / "out.onnx", tmp_path / "report.html"
    result = run(str(MLP), str(out), "--speedup", "50", "--shape", "input=16x64", "--threads",
                 "2", "--quiet", "--cache-dir", str(tmp_path / "cache"), "--html", str(page))
    assert result.returncode == 3, result.stderr
    assert not out.exists()
    text = page.read_text()
    assert "Refused (exit 3)" in text and "Amdahl bound" in text and "50x" in text
