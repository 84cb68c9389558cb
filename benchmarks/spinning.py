"""Why measurement sessions run without ORT thread spinning, and how noisy this machine is.

Times a model against itself with ``onnxprune``'s interleaved A/B bench (``bench_pair``), several
times, once with ORT's intra-op spinning on (ORT's default) and once off (what onnxprune uses).
A model against itself should read 1.00x; the spread around that is measurement noise.

    .venv/bin/python benchmarks/spinning.py [MODEL] [--shape NAME=DIMS ...] [--threads 2]
        [--repeats 5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxprune.common.runtime import RuntimeConfig, synthetic_feed  # noqa: E402
from onnxprune.graph.load import load_model, stamp_ir_version  # noqa: E402
from onnxprune.graph.shapes import bind_input_shapes, parse_shape_specs  # noqa: E402
from onnxprune.latency.measure import bench_pair  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=str(ROOT / "models" / "digits_cnn.onnx"))
    parser.add_argument("--shape", action="append", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    model = stamp_ir_version(load_model(args.model))
    shapes = parse_shape_specs(args.shape or ["input=256x1x8x8"])
    feed = synthetic_feed(bind_input_shapes(model, shapes).as_tuples())
    payload = model.SerializeToString()
    print(f"{Path(args.model).name} against itself, {args.threads} threads, "
          f"{args.repeats} x {args.seconds:g} s")
    for spinning in (True, False):
        runtime = RuntimeConfig(threads=args.threads, spinning=spinning)
        rows = [bench_pair(payload, payload, feed, runtime, max_seconds=args.seconds)
                for _ in range(args.repeats)]
        medians = ", ".join(f"{r.speedup_median:.2f}" for r in rows)
        low = min(r.speedup_q25 for r in rows)
        high = max(r.speedup_q75 for r in rows)
        print(f"spinning {'on ' if spinning else 'off'}: medians {medians}; pair-ratio "
              f"quartiles within {low:.2f}-{high:.2f}; median run {rows[0].time_a_s * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
