"""Prune -> quantize: does a pruned model keep its speedup after ONNX Runtime's quantizer?

For every model: prune it with the CLI (``--speedup S --calib DIR``; ``--best-effort`` when the
target is refused), quantize the dense and the pruned model with ORT's own tool
(``quantize_dynamic``, int8 weights; ``quantize_static`` as QDQ over the calibration set), and time
the pairs with onnxprune's A/B machinery (``bench_sessions``: fresh session pairs, interleaved
runs, median of pair ratios, median over sessions with the lower quartile) on synthetic and
calibration inputs:

- pruned float vs dense float (what onnxprune promised),
- pruned quantized vs dense quantized (does the speedup survive quantization),
- dense quantized vs dense float (what quantization alone gives, for context).

Fidelity: the relative output error (first float output, calibration samples) of the quantized
pruned model against the quantized dense one and against the float dense one. Writes a Markdown
table to ``--out`` (and the rows as JSON next to it).

Usage (a quiet machine; the numbers are speed measurements):
    .venv/bin/python benchmarks/prune_quantize.py --out docs/quantize-results.md
        [--models digits_mlp,digits_cnn,...] [--speedup 2] [--threads 2] [--seconds 10]
Real benchmark models come from ``make bench-models`` (``.cache/bench``); missing ones are skipped.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from onnxprune.calib.dataset import CalibSet, load_calib_dir
from onnxprune.common.runtime import RuntimeConfig, resolve_provider, synthetic_feed
from onnxprune.graph.shapes import bind_input_shapes, parse_shape_specs
from onnxprune.latency.measure import bench_sessions

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".cache" / "bench"

MODELS = {
    "digits_mlp": (ROOT / "models/digits_mlp.onnx", ["input=1024x64"],
                   ROOT / "calibration/digits_mlp"),
    "digits_cnn": (ROOT / "models/digits_cnn.onnx", ["input=64x1x8x8"],
                   ROOT / "calibration/digits_cnn"),
    "digits_transformer": (ROOT / "models/digits_transformer.onnx", ["input=256x8x8"],
                           ROOT / "calibration/digits_transformer"),
    "mnist": (BENCH / "mnist_cnn.onnx", ["input=64x1x28x28"], BENCH / "mnist_calib"),
    "minilm": (BENCH / "minilm_l6.onnx", ["input_ids=8x128", "attention_mask=8x128"],
               BENCH / "minilm_calib"),
    "effnet": (BENCH / "effnet_lite0.onnx", ["input=8x3x224x224"], BENCH / "effnet_calib"),
}


class FeedReader(CalibrationDataReader):
    """ORT's reader contract over in-memory feeds (one pass, as ORT expects)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def prune_with_cli(path: Path, out: Path, shapes: list[str], calib: Path,
                   args: argparse.Namespace) -> dict:
    """Prune with the CLI (exit 3 -> again with --best-effort); the JSON report plus the exit."""
    report = out.with_suffix(".json")
    base = [sys.executable, "-m", "onnxprune", str(path), str(out), "--speedup", str(args.speedup),
            *[a for s in shapes for a in ("--shape", s)], "--calib", str(calib), "--threads",
            str(args.threads), "--search-budget", args.search_budget, "--json", str(report),
            "--quiet"]
    result = subprocess.run(base, capture_output=True, text=True, cwd=ROOT)
    exit_code = result.returncode
    if exit_code == 3:
        result = subprocess.run([*base, "--best-effort"], capture_output=True, text=True, cwd=ROOT)
    if not out.exists():
        raise RuntimeError(f"prune failed (exit {result.returncode}): {result.stderr[-500:]}")
    return {"exit": exit_code, **json.loads(report.read_text())}


def calibration_feeds(calib: Path, shapes: dict[str, tuple[int, ...]], samples: int
                      ) -> list[dict[str, np.ndarray]]:
    """Calibration batches cut to rows of at most the deployment batch (labels dropped)."""
    data = load_calib_dir(calib, samples)
    rows = max(min(s[0] for s in shapes.values() if s), 1)
    feeds = []
    for batch in data.batches:
        inputs = {k: v for k, v in batch.items() if k in shapes}
        size = len(next(iter(inputs.values())))
        feeds += [{k: v[i:i + rows] for k, v in inputs.items()} for i in range(0, size, rows)]
    return feeds


def first_float_output(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = next(o.name for o in session.get_outputs() if o.type == "tensor(float)")
    return np.concatenate([session.run([name], f)[0].reshape(len(next(iter(f.values()))), -1)
                           for f in feeds])


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def measure(name: str, args: argparse.Namespace, tmp: Path) -> dict:
    path, shape_specs, calib = MODELS[name]
    out = tmp / f"{name}_pruned.onnx"
    report = prune_with_cli(path, out, shape_specs, calib, args)
    dense_model = onnx.load(path)
    bound = bind_input_shapes(dense_model, parse_shape_specs(shape_specs))
    feeds = calibration_feeds(calib, bound.shapes(), args.calib_samples)
    models = {"dense": path, "pruned": out}
    for tag, source in list(models.items()):
        models[f"{tag}_dynamic"] = tmp / f"{name}_{tag}_dynamic.onnx"
        quantize_dynamic(source, models[f"{tag}_dynamic"], weight_type=QuantType.QInt8)
        models[f"{tag}_qdq"] = tmp / f"{name}_{tag}_qdq.onnx"
        quantize_static(source, models[f"{tag}_qdq"], FeedReader(feeds),
                        quant_format=QuantFormat.QDQ)
    runtime = RuntimeConfig(provider=resolve_provider(args.provider), threads=args.threads)
    timing_feeds = {"synthetic": synthetic_feed(bound.as_tuples())}
    real = CalibSet(tuple(feeds), tuple(None for _ in feeds), str(calib)).feed_at(bound.shapes())
    if real is not None:
        timing_feeds["calibration"] = real

    def speed(a: str, b: str) -> dict:
        result = bench_sessions(onnx.load(models[a]), onnx.load(models[b]), timing_feeds,
                                runtime, sessions=args.sessions, seconds=args.seconds)
        return {"speedup": result.speedup, "low": result.speedup_low,
                "min": result.speedup_min, "max": result.speedup_max,
                "time_a_ms": result.time_a_s * 1e3, "time_b_ms": result.time_b_s * 1e3}

    outputs = {k: first_float_output(v, feeds[:8]) for k, v in models.items()}
    row = {"model": name, "prune_exit": report["exit"],
           "prune_measured": (report.get("measured_speedup") or {}).get("speedup"),
           "float": speed("dense", "pruned"),
           "dynamic": speed("dense_dynamic", "pruned_dynamic"),
           "qdq": speed("dense_qdq", "pruned_qdq"),
           "quantize_only_dynamic": speed("dense", "dense_dynamic"),
           "quantize_only_qdq": speed("dense", "dense_qdq")}
    for form in ("dynamic", "qdq"):
        row[f"error_{form}_vs_quantized_dense"] = relative(outputs[f"pruned_{form}"],
                                                           outputs[f"dense_{form}"])
        row[f"error_{form}_vs_float_dense"] = relative(outputs[f"pruned_{form}"],
                                                       outputs["dense"])
    row["error_float_pruned"] = relative(outputs["pruned"], outputs["dense"])
    return row


def _cell(entry: dict) -> str:
    return (f"{entry['speedup']:.2f}x (LQ {entry['low']:.2f}, {entry['min']:.2f}–"
            f"{entry['max']:.2f}; {entry['time_a_ms']:.3f}→{entry['time_b_ms']:.3f} ms)")


def write_table(rows: list[dict], args: argparse.Namespace) -> None:
    command = " ".join(["benchmarks/prune_quantize.py", "--out", str(args.out), "--models",
                        args.models, "--speedup", str(args.speedup), "--threads",
                        str(args.threads), "--seconds", str(args.seconds), "--sessions",
                        str(args.sessions), "--search-budget", args.search_budget])
    lines = [
        "# Prune -> quantize, measured", "",
        f"Machine: {platform.processor() or platform.machine()}, {args.threads} ORT threads, "
        f"{args.provider} EP, onnxruntime {ort.__version__}. Reproduce with:", "",
        f"    .venv/bin/python {command}", "",
        "Speedups: median over fresh session pairs of the median of interleaved pair ratios "
        "(LQ = lower quartile over sessions, then min–max; time A → time B). Errors: relative "
        "output error ‖a − b‖ / ‖b‖ of the first float output on calibration samples.", "",
        "| model | prune exit | pruned / dense (float) | pruned / dense (dynamic int8) | "
        "pruned / dense (static QDQ) | dynamic alone | QDQ alone | error float | "
        "error dynamic (vs q-dense / vs dense) | error QDQ (vs q-dense / vs dense) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | skipped: {r['skipped']} |" + " |" * 8)
            continue
        lines.append(
            f"| {r['model']} | {r['prune_exit']} | {_cell(r['float'])} | {_cell(r['dynamic'])} | "
            f"{_cell(r['qdq'])} | {_cell(r['quantize_only_dynamic'])} | "
            f"{_cell(r['quantize_only_qdq'])} | {r['error_float_pruned']:.3f} | "
            f"{r['error_dynamic_vs_quantized_dense']:.3f} / {r['error_dynamic_vs_float_dense']:.3f}"
            f" | {r['error_qdq_vs_quantized_dense']:.3f} / {r['error_qdq_vs_float_dense']:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Markdown table to write")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="timed seconds per A/B comparison, over all its sessions")
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--search-budget", default="10")
    parser.add_argument("--calib-samples", type=int, default=256)
    args = parser.parse_args()
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path, _, calib = MODELS[name]
            if not path.exists() or not calib.exists():
                print(f"skip {name}: {path} or {calib} not built (make bench-models)")
                rows.append({"model": name, "skipped": "not built"})
                continue
            row = measure(name, args, Path(tmp))
            print(json.dumps(row))
            rows.append(row)
    write_table(rows, args)


if __name__ == "__main__":
    main()
