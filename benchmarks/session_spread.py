"""How much one model's latency moves from one fresh ONNX Runtime session to the next.

Times MODEL in ``--sessions`` fresh sessions created one after another in this process (warm-up,
then ``--runs`` timed runs with io-binding; the session's median is printed), with the session
settings onnxprune measures with, or one variant of them, so the settings that could explain a
bimodal latency can be tried one by one:

    .venv/bin/python benchmarks/session_spread.py models/digits_cnn.onnx --shape input=256x1x8x8
    .venv/bin/python benchmarks/session_spread.py MODEL --shape ... --variant nopattern

Variants: ``default`` (onnxprune's: no spinning), ``spin`` (ORT's default spinning), ``t1`` (one
thread), ``noarena`` (no CPU memory arena), ``nopattern`` (no memory pattern planning),
``extended`` (graph optimizations below ``all``: no NCHWc layout), ``daz`` (denormals as zero).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxprune.common.runtime import RuntimeConfig, session_options, synthetic_feed  # noqa: E402
from onnxprune.graph.load import load_model, stamp_ir_version  # noqa: E402
from onnxprune.graph.shapes import bind_input_shapes, parse_shape_specs  # noqa: E402

VARIANTS = ("default", "spin", "t1", "noarena", "nopattern", "extended", "daz")


def options_for(variant: str, threads: int) -> ort.SessionOptions:
    options = session_options(RuntimeConfig(threads=1 if variant == "t1" else threads,
                                            spinning=variant == "spin"))
    if variant == "noarena":
        options.enable_cpu_mem_arena = False
    elif variant == "nopattern":
        options.enable_mem_pattern = False
    elif variant == "extended":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    elif variant == "daz":
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--shape", action="append", default=[])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--variant", choices=VARIANTS, default="default")
    args = parser.parse_args()
    model = stamp_ir_version(load_model(args.model))
    bound = bind_input_shapes(model, parse_shape_specs(args.shape))
    feed = synthetic_feed(bound.as_tuples())
    payload = model.SerializeToString()
    medians = []
    for _ in range(args.sessions):
        session = ort.InferenceSession(payload, options_for(args.variant, args.threads),
                                       providers=["CPUExecutionProvider"])
        binding = session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        for output in session.get_outputs():
            binding.bind_output(output.name)
        for _ in range(10):
            session.run_with_iobinding(binding)
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            session.run_with_iobinding(binding)
            times.append(time.perf_counter() - start)
        medians.append(float(np.median(times)) * 1e3)
        del session
    spread = max(medians) / min(medians)
    print(f"{args.model.name} [{args.variant}] per-session median ms: "
          + " ".join(f"{m:.3f}" for m in medians) + f"   (max/min {spread:.2f})")


if __name__ == "__main__":
    main()
