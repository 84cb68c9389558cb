"""The exit-0 contract end to end: prune to each target, then check both sides independently.

For every (model, target): run ``onnxprune IN OUT --speedup S --calib DIR`` (its exit code, the
in-run speedup with its spread over fresh sessions, the fidelity on held-out calibration samples
and the wall time). When it refuses (exit 3) the same command runs again with ``--best-effort``,
which writes the fastest model within the fidelity bound, and with ``--no-fidelity-bound``, which
gives the fidelity reached at the requested speed. Every written model is then re-measured
``--repeats`` times with ``onnxprune bench`` in fresh processes (the numbers a user would see) and,
for the real benchmark models, scored on its task metric on evaluation data disjoint from the
calibration data (``models/build_benchmarks.py --score``). Writes Markdown (``--out``) and JSON.

Usage:
    .venv/bin/python benchmarks/speedup_targets.py [--models NAME,...] [--targets 1.5,2,3]
        [--repeats 3] [--threads 2] [--out docs/contract.md]
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
    "mnist": (BENCH / "mnist_cnn.onnx", ["input=64x1x28x28"], str(BENCH / "mnist_calib")),
    "minilm": (BENCH / "minilm_l6.onnx", ["input_ids=8x128", "attention_mask=8x128"],
               str(BENCH / "minilm_calib")),
    "effnet": (BENCH / "effnet_lite0.onnx", ["input=8x3x224x224"], str(BENCH / "effnet_calib")),
}
SCORED = {"mnist", "minilm", "effnet"}


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
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "contract.md")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only write the Markdown again from a JSON this script wrote")
    args = parser.parse_args()
    if args.render is not None:
        rows = json.loads(args.render.read_text())
        for row in rows:
            if "message" in row:
                row["message"] = error_message(row["message"])
        write_table(rows, args)
        return
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
                row = {"model": name, "target": target}
                for mode, extra in (("run", []), ("best-effort", ["--best-effort"]),
                                    ("no-bound", ["--no-fidelity-bound"])):
                    if mode != "run" and row["exit"] == 0:
                        break
                    out, report = Path(tmp) / f"{name}_{target}.onnx", Path(tmp) / "r.json"
                    out.unlink(missing_ok=True)
                    started = time.monotonic()
                    result = cli(str(path), str(out), "--speedup", str(target), *shape_args,
                                 *calib_args, "--threads", str(args.threads), "--search-budget",
                                 args.search_budget, "--json", str(report), "--quiet", *extra)
                    entry = {"exit": result.returncode, "wall_s": round(time.monotonic() -
                                                                        started, 1)}
                    if mode == "run":
                        row.update(entry)
                        if result.returncode != 0:
                            row["message"] = error_message(result.stderr)
                    if out.exists() and report.exists():
                        entry.update(_measure(name, path, out, report, shape_args, args))
                    row[mode] = entry
                print(json.dumps(row))
                rows.append(row)
    write_table(rows, args)


def _measure(name: str, path: Path, out: Path, report: Path, shape_args: list[str],
             args: argparse.Namespace) -> dict:
    data = json.loads(report.read_text())
    measured = data["measured_speedup"] or {}
    fidelity = data["fidelity"] or {}
    entry = {"bound": data["amdahl_bound"], "predicted": data["predicted_speedup"],
             "in_run": measured.get("speedup"), "in_run_low": measured.get("speedup_low"),
             "in_run_min": measured.get("speedup_min"),
             "in_run_max": measured.get("speedup_max"), "rounds": len(data["rounds"]),
             "relative_error": fidelity.get("relative_error"),
             "cosine": min((o["cosine_mean"] for o in fidelity.get("outputs", [])
                            if o["cosine_mean"] is not None), default=None),
             "accuracy_dense": fidelity.get("accuracy_dense"),
             "accuracy_pruned": fidelity.get("accuracy_pruned"),
             "layouts": sorted({layer["label"].split(" ")[0] for layer in data["layers"]
                                if layer["layout"] != "dense"})}
    bench = []
    for _ in range(args.repeats):
        b = cli("bench", str(path), str(out), *shape_args, "--threads", str(args.threads),
                "--seconds", "5", "--json", "-")
        bench.append(json.loads(b.stdout)["speedup"])
    entry["bench"] = bench
    if name in SCORED:
        scored = subprocess.run([sys.executable, str(ROOT / "models/build_benchmarks.py"),
                                 "--score", name, str(out)], capture_output=True, text=True,
                                cwd=ROOT)
        line = scored.stdout.strip().splitlines()[-1] if scored.stdout.strip() else ""
        entry["metric"] = line.split(": ", 1)[-1]
    return entry


def _cell(entry: dict | None) -> str:
    if not entry or "in_run" not in entry:
        return "-"
    bench = ", ".join(f"{b:.2f}" for b in entry["bench"])
    fid = "-" if entry["relative_error"] is None else f"{entry['relative_error']:.3f}"
    if entry.get("cosine") is not None:
        fid += f" (cos {entry['cosine']:.3f})"
    if entry.get("accuracy_pruned") is not None:
        fid += f", calib acc {entry['accuracy_dense']:.3f}→{entry['accuracy_pruned']:.3f}"
    metric = f"; {entry['metric']}" if entry.get("metric") else ""
    return (f"{entry['in_run']:.2f}x [{entry['in_run_min']:.2f}–{entry['in_run_max']:.2f}] "
            f"/ bench {bench} / error {fid}{metric}")


def error_message(stderr: str) -> str:
    """The run's own error line (log lines before it are progress, not the reason)."""
    start = stderr.rfind("onnxprune: error:")
    text = stderr[start:] if start >= 0 else stderr[-600:]
    return " ".join(text.split())


def write_table(rows: list[dict], args: argparse.Namespace) -> None:
    lines = [
        "# The exit-0 contract, measured",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {args.threads} ORT threads, "
        "CPU EP. Reproduce with:",
        "",
        f"    .venv/bin/python benchmarks/speedup_targets.py --models {args.models} "
        f"--targets {args.targets} --repeats {args.repeats} --threads {args.threads} "
        f"--search-budget {args.search_budget}",
        "",
        "Each cell: in-run speedup (median over 5 fresh session pairs) [min–max over them] / "
        "independent `onnxprune bench` re-measures in fresh processes / relative output error "
        "on held-out calibration samples (worst output's mean per-position error; cosine) and, "
        "for the real models, the task metric on evaluation data. Exit 3 = refused: then the "
        "`--best-effort` column is the fastest model within the fidelity bound (default "
        "--max-error 0.2) and the `no bound` column what the requested speed costs.",
        "",
        "| model | target | exit | bound | run (exit 0) | --best-effort (within the bound) | "
        "--no-fidelity-bound (at the target) | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        run = r.get("run", {})
        bound = run.get("bound") or (r.get("best-effort") or {}).get("bound")
        lines.append(
            f"| {r['model']} | {r['target']:g}x | {r['exit']} | "
            f"{'-' if bound is None else f'{bound:.2f}x'} | {_cell(run)} | "
            f"{_cell(r.get('best-effort'))} | {_cell(r.get('no-bound'))} | {r['wall_s']} |")
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
