"""What building the latency table costs: wall time cold (empty cache), then warm (from cache).

    .venv/bin/python benchmarks/profile_cost.py                       # the shipped models/*.onnx
    .venv/bin/python benchmarks/profile_cost.py minilm.onnx --shape input_ids=8x128 \\
        --shape attention_mask=8x128 --threads 2

Each model is analysed at the given shapes, every layout fast on the EP offers its options at the
default levels, and the table is built twice into a fresh temporary cache folder. The printed
table also shows what the latency stage found: dense time, base time, isolation gap and
correction, and the Amdahl bound.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxprune.common.runtime import RuntimeConfig, resolve_provider  # noqa: E402
from onnxprune.graph.candidates import ensure_node_names, find_candidates  # noqa: E402
from onnxprune.graph.load import load_model  # noqa: E402
from onnxprune.graph.shapes import bind_input_shapes, parse_shape_specs  # noqa: E402
from onnxprune.latency.build import build_latency_table  # noqa: E402
from onnxprune.layouts.registry import candidate_options, layouts_fast_on, option_label  # noqa: E402


def _options(analysis, provider: str, layouts: list[str] | None):
    names = layouts or layouts_fast_on(provider)
    return {c.name: candidate_options(c, names) for c in analysis.candidates}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--shape", action="append", default=[], help="NAME=DxD (repeatable)")
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layout", action="append", help="layouts to offer (default: fast ones)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    models = args.models or sorted((ROOT / "models").glob("*.onnx"))
    if not models:
        print("no models given and none in models/*.onnx")
        return 2
    runtime = RuntimeConfig(resolve_provider(args.provider), args.threads)
    shapes = parse_shape_specs(args.shape)

    header = (
        f"{'model':<22} {'cand':>4} {'opts':>5} {'timed':>5} {'cold s':>7} {'warm s':>7} "
        f"{'dense ms':>9} {'base ms':>8} {'gap ms':>8} {'scale':>6} {'amdahl':>7}"
    )
    print(f"{runtime.provider}, threads={runtime.threads}")
    print(header)
    print("-" * len(header))
    for path in models:
        model = ensure_node_names(load_model(path))
        bound = bind_input_shapes(
            model, {k: v for k, v in shapes.items() if k in {i.name for i in model.graph.input}}
        )
        analysis = find_candidates(model, bound)
        options = _options(analysis, runtime.provider, args.layout)
        n_options = sum(len(v) for v in options.values())
        with tempfile.TemporaryDirectory(prefix="onnxprune-bench-cache-") as cache:
            start = time.perf_counter()
            cold = build_latency_table(model, analysis, options, runtime, cache_dir=Path(cache))
            cold_s = time.perf_counter() - start
            start = time.perf_counter()
            warm = build_latency_table(model, analysis, options, runtime, cache_dir=Path(cache))
            warm_s = time.perf_counter() - start
        assert warm.timings_run == 0, "warm build re-measured timings"
        print(
            f"{path.stem:<22} {len(analysis.candidates):>4} {n_options:>5} "
            f"{cold.timings_run:>5} {cold_s:>7.2f} {warm_s:>7.2f} "
            f"{cold.dense_total_s * 1e3:>9.3f} {cold.base_s * 1e3:>8.3f} "
            f"{cold.gap_s * 1e3:>+8.3f} {cold.scale:>6.2f} {cold.amdahl_bound():>6.2f}x"
        )
        for candidate, option, reason in cold.dropped:
            print(f"    dropped {candidate} {option_label(option)}: {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
