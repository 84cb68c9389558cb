"""How the Amdahl bound's measurement moves with the machine's phases (issue 14).

Builds a model's all-fastest variant (every candidate at its fastest option, as the bound is
measured) and times it against dense in back-to-back fresh session pairs for a while, keeping
every session. Then it shows how a median over N consecutive sessions moves from one window to
the next, which is what decides how long the bound has to be measured
(``onnxprune.latency.anchor.BOUND_MAX_ROUNDS``)::

    .venv/bin/python benchmarks/bound_phases.py models/digits_cnn.onnx --shape input=256x1x8x8 \\
        --minutes 4 --session-seconds 1

Run it on a quiet machine, alone: it is a timing measurement.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def all_fastest(model_path: str, shapes: list[str], threads: int, cache_dir: Path):
    """(dense model, all-fastest model, feed) as ``onnxprune profile`` would measure them."""
    from onnxprune.allocate.budget import problem_from_table
    from onnxprune.common.runtime import RuntimeConfig, synthetic_feed
    from onnxprune.graph.candidates import find_candidates
    from onnxprune.graph.load import load_model
    from onnxprune.graph.prepare import prepare_model
    from onnxprune.graph.shapes import bind_input_shapes, parse_shape_specs
    from onnxprune.latency.build import build_latency_table
    from onnxprune.latency.random_masks import model_with_options
    from onnxprune.layouts.registry import candidate_options, layouts_fast_on
    from onnxprune.structures.context import discover_and_attach, layouts_for

    model = prepare_model(load_model(model_path), None).model
    bound = bind_input_shapes(model, parse_shape_specs(shapes))
    runtime = RuntimeConfig(threads=threads)
    names = [n for n in layouts_fast_on(runtime.provider) if n != "dense"]
    analysis = find_candidates(model, bound)
    analysis, candidates, producers, _ = discover_and_attach(model, analysis,
                                                             list(analysis.candidates))
    options = {c.name: candidate_options(c, layouts_for(c, names, producers)) for c in candidates}
    table = build_latency_table(model, analysis, options, runtime, cache_dir=cache_dir)
    problem = problem_from_table(table, candidates)
    fastest = model_with_options(model, candidates, problem.fastest_options())
    return model, fastest, synthetic_feed(bound.as_tuples()), runtime


def sessions_over(dense, fastest, feed, runtime, seconds: float, per_session: float) -> list:
    """Fresh interleaved session pairs back to back for ``seconds``: raw run times of each."""
    from onnxprune.latency.measure import _Runner, _timed_pair, _warm_up

    a, b = dense.SerializeToString(), fastest.SerializeToString()
    out, start = [], time.time()
    while time.time() - start < seconds:
        run_a, run_b = _Runner(a, feed, runtime), _Runner(b, feed, runtime)
        _warm_up(3, run_a, run_b)
        times_a, times_b, deadline, i = [], [], time.perf_counter() + per_session, 0
        while time.perf_counter() < deadline or i < 5:
            t_a, t_b = _timed_pair(run_a, run_b, i)
            times_a.append(t_a)
            times_b.append(t_b)
            i += 1
        out.append({"t": time.time() - start, "a": times_a, "b": times_b})
    return out


def summarize(sessions: list, windows=(5, 10, 20, 30, 40, 60)) -> None:
    ratios = np.array([np.median(np.array(s["a"]) / np.array(s["b"])) for s in sessions])
    dense = np.array([np.median(s["a"]) for s in sessions]) * 1e3
    fast = np.array([np.median(s["b"]) for s in sessions]) * 1e3
    print(f"{len(sessions)} sessions: session median ratio {np.median(ratios):.2f} "
          f"[{ratios.min():.2f}–{ratios.max():.2f}]; dense {dense.min():.3f}–{dense.max():.3f} ms,"
          f" all-fastest {fast.min():.3f}–{fast.max():.3f} ms")
    print("median over N consecutive sessions, from window to window (step N/4):")
    for n in windows:
        if n > len(ratios):
            break
        values = np.array([np.median(ratios[i:i + n])
                           for i in range(0, len(ratios) - n + 1, max(1, n // 4))])
        print(f"  N={n:3d}: mean {values.mean():.2f}, ±{200 * values.std() / values.mean():.1f}%"
              f" (2 sd), range {values.min():.2f}–{values.max():.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--shape", action="append", default=[])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--session-seconds", type=float, default=1.0)
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/bound_phases"))
    parser.add_argument("--json", type=Path, help="also write every session's run times here")
    args = parser.parse_args()
    dense, fastest, feed, runtime = all_fastest(args.model, args.shape, args.threads,
                                                args.cache_dir)
    sessions = sessions_over(dense, fastest, feed, runtime, 60 * args.minutes,
                             args.session_seconds)
    if args.json:
        args.json.write_text(json.dumps(sessions))
    summarize(sessions)


if __name__ == "__main__":
    main()
