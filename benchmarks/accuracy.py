"""Accuracy at equal measured speedup: what each part of the method buys (issue 6).

For each model and speed target, four methods are compared on the model's held-out eval set:

1. uniform + magnitude: one layout at one level in every node, masks by magnitude, no data;
2. uniform + reconstruction: the same masks chosen and weights updated by OBS on calibration data;
3. DP + reconstruction: per-node layouts/levels by SPDY's DP over measured times (no search);
4. DP + reconstruction + search: the full method (SPDY's coefficient search).

Methods 3 and 4 are run at the target; the uniform methods sweep the level and take the lowest
level whose *measured* speedup reaches the speedup method 4 measured, so all rows compare at (at
least) the same measured speedup. Every speedup is measured by the pipeline's verification step
(interleaved A/B, median of ratios).

Usage:
    .venv/bin/python benchmarks/accuracy.py [--models digits_cnn,...] [--targets 2,3]
        [--threads 2] [--out docs/accuracy.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxprune import PruneConfig
from onnxprune.common.errors import TargetUnreachableError
from onnxprune.pipeline.prune import prune

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".cache" / "bench"
DIGITS = ROOT / "models" / "data" / "digits_eval.npz"
LEVELS = (0.375, 0.5, 0.625, 0.75, 0.8125, 0.875, 0.9375)

# name: (model, shapes, calibration folder, eval set key, targets within the model's bound)
MODELS = {
    "digits_mlp": ("models/digits_mlp.onnx", {"input": (1024, 64)}, "calibration/digits_mlp",
                   "input_flat", (1.5,)),
    "digits_cnn": ("models/digits_cnn.onnx", {"input": (256, 1, 8, 8)}, "calibration/digits_cnn",
                   "input_img", (2.0, 3.0)),
    "digits_transformer": ("models/digits_transformer.onnx", {"input": (256, 8, 8)},
                           "calibration/digits_transformer", "input_seq", (1.5,)),
    "mnist_cnn": (str(BENCH / "mnist_cnn.onnx"), {"input": (64, 1, 28, 28)},
                  str(BENCH / "mnist_calib"), "mnist", (1.5, 2.0)),
}


def eval_set(key: str) -> tuple[np.ndarray, np.ndarray]:
    if key == "mnist":
        data = np.load(BENCH / "mnist_eval.npz")
        return data["input"], data["labels"]
    data = np.load(DIGITS)
    return data[key], data["labels"]


def accuracy(path: Path, key: str) -> float:
    x, labels = eval_set(key)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    scores = np.concatenate([session.run(None, {name: x[i:i + 256]})[-1]
                             for i in range(0, len(x), 256)])
    return float(np.mean(np.argmax(scores, -1) == labels))


def run(model: str, out: Path, key: str, **config) -> dict:
    started = time.monotonic()
    try:
        # Methods are compared at equal speed, so the fidelity guard must not refuse any of them.
        report = prune(ROOT / model, out, PruneConfig(**config, fidelity_bound=False))
    except TargetUnreachableError as exc:
        return {"error": str(exc)[:200]}
    return {"speedup": report.measured.speedup, "accuracy": accuracy(out, key),
            "wall_s": time.monotonic() - started,
            "layouts": sorted({layer.option.layout for layer in report.layers})}


def uniform(model, shapes, calib, key, layout, goal, threads, tmp, cache) -> dict:
    """Lowest uniform level whose measured speedup reaches ``goal``."""
    last = {}
    for level in LEVELS:
        result = run(model, tmp / "u.onnx", key, sparsity=level, layouts=(layout,),
                     shapes=shapes, calib_dir=calib, threads=threads, cache_dir=cache)
        if "error" in result:
            continue
        result["level"] = level
        last = result
        if result["speedup"] >= goal:
            return result
    return {**last, "short": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits_mlp,digits_cnn,digits_transformer,mnist_cnn")
    parser.add_argument("--targets", default=None,
                        help="Override the per-model targets, e.g. 2,3.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--search-budget", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "accuracy.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        cache = tmp / "cache"
        for name in args.models.split(","):
            model, shapes, calib, key, model_targets = MODELS[name]
            if not (ROOT / model).exists():
                print(f"skip {name}: {model} not built")
                continue
            calib_path = Path(ROOT / calib)
            dense = accuracy(ROOT / model, key)
            targets = ([float(t) for t in args.targets.split(",")] if args.targets
                       else model_targets)
            for target in targets:
                common = dict(shapes=shapes, threads=args.threads, cache_dir=cache)
                full = run(model, tmp / "full.onnx", key, speedup=target, calib_dir=calib_path,
                           search_budget=args.search_budget, best_effort=True, **common)
                dp = run(model, tmp / "dp.onnx", key, speedup=target, calib_dir=calib_path,
                         search_budget=0, best_effort=True, **common)
                goal = full.get("speedup", target)
                row = {"model": name, "target": target, "dense": dense, "full": full, "dp": dp}
                for layout in ("block", "channel"):
                    row[f"uniform_{layout}_magnitude"] = uniform(
                        model, shapes, None, key, layout, goal, args.threads, tmp, cache)
                    row[f"uniform_{layout}_recon"] = uniform(
                        model, shapes, calib_path, key, layout, goal, args.threads, tmp, cache)
                print(json.dumps(row))
                rows.append(row)
    write(rows, args)


def _cell(result: dict) -> str:
    if not result or "error" in result:
        return "n/a"
    text = f"{result['accuracy']:.3f} @ {result['speedup']:.2f}x"
    if "level" in result:
        text += f" ({result['level']:.0%})"
    if result.get("short"):
        text += " (short)"
    return text


def write(rows: list[dict], args: argparse.Namespace) -> None:
    lines = [
        "# Accuracy at equal measured speedup",
        "",
        f"Machine: {platform.processor() or platform.machine()}, CPU EP, {args.threads} threads. "
        "Reproduce with:",
        "",
        f"    .venv/bin/python benchmarks/accuracy.py --models {args.models} "
        + (f"--targets {args.targets} " if args.targets else "")
        + f"--threads {args.threads} --search-budget {args.search_budget:g}",
        "",
        "Cells: held-out accuracy @ measured speedup (uniform level in brackets). Uniform rows use "
        "the lowest level whose measured speedup reaches the full method's; '(short)' = even the "
        "highest level did not reach it.",
        "",
        "| model | target | dense | uniform block + magnitude | uniform block + recon | "
        "uniform channel + magnitude | uniform channel + recon | DP + recon | "
        "DP + recon + search | full wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['target']:g}x | {r['dense']:.3f} | "
            f"{_cell(r['uniform_block_magnitude'])} | {_cell(r['uniform_block_recon'])} | "
            f"{_cell(r['uniform_channel_magnitude'])} | {_cell(r['uniform_channel_recon'])} | "
            f"{_cell(r['dp'])} | {_cell(r['full'])} | {r['full'].get('wall_s', 0):.0f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2, default=float) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
