"""Speed targets end to end: prune to 1.5x / 2x / 3x, then measure the output independently.

For every (model, target): run ``onnxprune IN OUT --speedup S`` (recording its exit code, its
predicted and measured speedup and the wall time of the whole run), then measure the written
model against the input ``--repeats`` more times with ``onnxprune bench`` (interleaved A/B, median
of ratios) — the numbers a user would see. Writes a Markdown table (``--out``) and JSON next to it.

Usage:
    .venv/bin/python benchmarks/speedup_targets.py [--models NAME,...] [--targets 1.5,2,3]
        [--repeats 3] [--threads 2] [--out docs/speedup-targets.md]
Generated models come from ``benchmarks/generated_models.py``, MiniLM from
``models/build_benchmarks.py`` (``make bench-models``); missing ones are listed and skipped.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".cache" / "bench"

MODELS = {
    "digits_mlp": (ROOT / "models/digits_mlp.onnx", ["input=1024x64"], "calibration/digits_mlp"),
    "digits_cnn": (ROOT / "models/digits_cnn.onnx", ["input=64x1x8x8"], "calibration/digits_cnn"),
    "digits_transformer": (ROOT / "models/digits_transformer.onnx", ["input=256x8x8"],
                           "calibration/digits_transformer"),
    "mlp1024": (BENCH / "mlp1024.onnx", ["input=512x1024"], None),
    "block384": (BENCH / "block384.onnx", ["input=4x128x384"], None),
    "minilm": (BENCH / "minilm_l6.onnx", ["input_ids=8x128", "attention_mask=8x128"],
               str(BENCH / "minilm_calib")),
}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True,
                          text=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--targets", default="1.5,2,3")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--search-budget", default="10")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "speedup-targets.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path, shapes, calib = MODELS[name]
            if not path.exists():
                print(f"skip {name}: {path} not built")
                continue
            shape_args = [a for s in shapes for a in ("--shape", s)]
            calib_args = ["--calib", calib] if calib and Path(ROOT / calib).exists() else []
            for target in (float(t) for t in args.targets.split(",")):
                out, report = Path(tmp) / f"{name}_{target}.onnx", Path(tmp) / "r.json"
                started = time.monotonic()
                result = cli(str(path), str(out), "--speedup", str(target), *shape_args,
                             *calib_args, "--threads", str(args.threads), "--search-budget",
                             args.search_budget, "--json", str(report), "--quiet")
                wall = time.monotonic() - started
                row = {"model": name, "target": target, "exit": result.returncode,
                       "wall_s": round(wall, 1)}
                if result.returncode == 0:
                    data = json.loads(report.read_text())
                    row.update(predicted=data["predicted_speedup"], bound=data["amdahl_bound"],
                               in_run=data["measured_speedup"]["speedup_median"],
                               rounds=len(data["rounds"]),
                               accuracy=(data["quality"] or {}).get("accuracy_pruned"),
                               accuracy_dense=(data["quality"] or {}).get("accuracy_dense"))
                    bench = []
                    for _ in range(args.repeats):
                        b = cli("bench", str(path), str(out), *shape_args, "--threads",
                                str(args.threads), "--seconds", "5", "--json", "-")
                        bench.append(json.loads(b.stdout)["speedup_median"])
                    row["bench"] = bench
                else:
                    row["message"] = result.stderr.strip().splitlines()[-1][:300]
                print(json.dumps(row))
                rows.append(row)
    write_table(rows, args)


def write_table(rows: list[dict], args: argparse.Namespace) -> None:
    lines = [
        "# Speed targets, measured",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {args.threads} ORT threads, "
        "CPU EP. Reproduce with:",
        "",
        f"    .venv/bin/python benchmarks/speedup_targets.py --models {args.models} "
        f"--targets {args.targets} --repeats {args.repeats} --threads {args.threads}",
        "",
        "`bench` = independent `onnxprune bench IN OUT` runs after pruning (median of interleaved "
        "pair ratios, 5 s each). `in run` = the verification measurement inside the pruning run. "
        "Exit 3 = target refused as unreachable (nothing written).",
        "",
        "| model | target | exit | bound | predicted | in run | bench (repeats) | rounds | "
        "calib acc dense → pruned | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["exit"] == 0:
            acc = (f"{r['accuracy_dense']:.3f} → {r['accuracy']:.3f}"
                   if r.get("accuracy") is not None else "-")
            bench = ", ".join(f"{b:.2f}" for b in r["bench"])
            lines.append(f"| {r['model']} | {r['target']:g}x | 0 | {r['bound']:.2f}x | "
                         f"{r['predicted']:.2f}x | {r['in_run']:.2f}x | {bench} | {r['rounds']} | "
                         f"{acc} | {r['wall_s']} |")
        else:
            lines.append(f"| {r['model']} | {r['target']:g}x | {r['exit']} | | | | | | | "
                         f"{r['wall_s']} |")
    failures = [r for r in rows if r["exit"] != 0]
    if failures:
        lines += ["", "Messages of the runs that exited non-zero:", ""]
        lines += [f"- {r['model']} {r['target']:g}x: {r['message']}" for r in failures]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
