"""The HTML pages rendered in a real headless browser (Debian's ``chromium``; ``make chromium``).

String checks cannot see a broken page: a chart clipped off its own canvas, an SVG that does not
parse (zero size), a script error. So each page is loaded in chromium with a small probe injected
first in ``<head>``: it records errors, and on load writes the rendered size of every SVG, the
bounds of every SVG text, and the page's visible text into an attribute that ``--dump-dom``
returns. The probe is added to a test copy only; the shipped page has no script.

The browser is required, not optional: ``make test`` installs it first, and a missing browser
fails here with the command to run, so CI can never skip the render silently.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from onnxprune.report.html import render_profile_html, render_prune_html

DATA = Path(__file__).parent / "data"

PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message)));
window.addEventListener("load", () => {
  const svgs = [...document.querySelectorAll("svg")].map(svg => {
    const box = svg.getBoundingClientRect();
    const view = svg.viewBox.baseVal;
    const texts = [...svg.querySelectorAll("text")].map(t => {
      const b = t.getBBox();
      return [t.textContent, b.x, b.x + b.width, b.width];
    });
    return {width: box.width, height: box.height, viewWidth: view.width, texts: texts};
  });
  const probe = {errors: window.__errors, svgs: svgs, scripts: document.scripts.length,
                 images: [...document.images].map(i => i.naturalWidth),
                 text: document.body.innerText};
  document.documentElement.setAttribute("data-probe", JSON.stringify(probe));
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.fail("headless chromium not found: run `make chromium` (apt-get install -y chromium)")


def render(page: str, tmp_path: Path) -> dict:
    """Load ``page`` (with the probe) in headless chromium and return what the probe saw."""
    probed = page.replace("<head>", "<head>" + PROBE, 1)
    path = tmp_path / "page.html"
    path.write_text(probed, encoding="utf-8")
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1600",
         "--virtual-time-budget=3000", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'data-probe="([^"]*)"', result.stdout)
    assert found, "the page did not finish loading in chromium:\n" + result.stdout[:500]
    return json.loads(html.unescape(found.group(1)))


def assert_renders_cleanly(probe: dict) -> None:
    assert probe["errors"] == []
    assert probe["scripts"] == 1  # only the probe: the page itself runs no script
    assert all(width > 0 for width in probe["images"])
    assert probe["svgs"], "no chart on the page"
    for svg in probe["svgs"]:
        assert svg["width"] > 100 and svg["height"] > 50  # the SVG parsed and has a size
        for text, left, right, width in svg["texts"]:
            assert width > 0, f"chart label {text!r} not rendered"
            # No label runs off the chart's canvas (clipped or overlapping its neighbour area).
            assert left >= -0.5 and right <= svg["viewWidth"] + 0.5, (text, left, right)


def test_prune_report_renders_in_chromium(tmp_path):
    data = json.loads((DATA / "prune_report.json").read_text())
    probe = render(render_prune_html(data), tmp_path)
    assert_renders_cleanly(probe)
    text = " ".join(probe["text"].split())
    m = data["measured_speedup"]
    for value in (f"{m['speedup']:.2f}x", f"lower quartile {m['speedup_low']:.2f}x",
                  f"{data['amdahl_bound']:.2f}x", f"{data['fidelity']['relative_error']:.3f}",
                  data["fingerprint"], *[layer["label"] for layer in data["layers"]]):
        assert value in text, value
    chart_labels = [t[0] for t in probe["svgs"][0]["texts"]]
    assert all(layer["name"] in chart_labels for layer in data["layers"])


def test_profile_page_renders_in_chromium(tmp_path):
    data = json.loads((DATA / "profile_report.json").read_text())
    probe = render(render_profile_html(data), tmp_path)
    assert_renders_cleanly(probe)
    text = " ".join(probe["text"].split())
    assert f"{data['amdahl_bound']:.2f}x" in text
    assert all(row["name"] in text for row in data["nodes"])


def test_the_probe_catches_a_broken_page(tmp_path):
    """The checks can fail: a script error and a label pushed off the canvas are both seen."""
    broken = ('<!DOCTYPE html><html><head></head><body><script>undefinedFunction()</script>'
              '<svg xmlns="http://www.w3.org/2000/svg" width="200" height="80" '
              'viewBox="0 0 200 80"><text x="190" y="20">a label far too long</text></svg>'
              "</body></html>")
    probe = render(broken, tmp_path)
    assert probe["errors"] and "undefinedFunction" in probe["errors"][0]
    with pytest.raises(AssertionError):
        assert_renders_cleanly({**probe, "errors": [], "scripts": 1})
