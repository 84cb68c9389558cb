"""Time every layout's materialized node against dense on representative shapes (ORT CPU).

Each row builds the same isolated one-node models the latency stage times
(:func:`onnxprune.layouts.isolate.isolated_model`), then measures dense (A) and the layout (B) in
interleaved pairs and reports the median of the per-pair ratios, which is robust to the drift of
a shared machine. Not a test: speed is never asserted.

    .venv/bin/python benchmarks/layout_speed.py [--threads 2] [--rounds 9] [--no-spin] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.candidates import Candidate, ensure_node_names, find_candidates
from onnxprune.graph.load import stamp_ir_version
from onnxprune.graph.shapes import bind_input_shapes
from onnxprune.layouts.base import LayoutOption
from onnxprune.layouts.block import Block
from onnxprune.layouts.channel import Channel
from onnxprune.layouts.isolate import dense_isolated_model, isolated_model
from onnxprune.layouts.nm import NM
from onnxprune.layouts.registry import option_label
from onnxprune.layouts.unstructured import Unstructured


@dataclass(frozen=True)
class Case:
    label: str
    model: onnx.ModelProto
    shape: tuple[int, ...]


def matmul_case(m: int, k: int, n: int) -> Case:
    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(w, "w")],
    )
    model = stamp_ir_version(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return Case(f"MatMul [{m}x{k}]·[{k}x{n}]", model, (m, k))


def conv_case(c: int, o: int, hw: int, kernel: int = 3) -> Case:
    w = np.random.default_rng(0).standard_normal((o, c, kernel, kernel)).astype(np.float32)
    b = np.zeros(o, np.float32)
    pad = kernel // 2
    graph = helper.make_graph(
        [
            helper.make_node(
                "Conv",
                ["x", "w", "b"],
                ["y"],
                name="conv",
                pads=[pad] * 4,
                kernel_shape=[kernel, kernel],
            )
        ],
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, o, hw, hw])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = stamp_ir_version(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return Case(f"Conv [1,{c},{hw},{hw}] {kernel}x{kernel} {c}→{o}", model, (1, c, hw, hw))


def candidate_of(case: Case) -> Candidate:
    ensure_node_names(case.model)
    bound = bind_input_shapes(case.model, {"x": case.shape})
    (candidate,) = find_candidates(case.model, bound).candidates
    return candidate


def options_for(candidate: Candidate, quick: bool) -> list[LayoutOption]:
    """A representative subset of what the layouts offer (same option generation as the DP)."""
    if candidate.op == "Conv":
        shapes = {(16, 16), (32, 32), (64, 64)} if not quick else {(32, 32)}
        levels = (0.5, 0.75)
    else:
        shapes = {(32, 32), (64, 64), (128, 128), (16, 64), (64, 16)} if not quick else {(64, 64)}
        levels = (0.5, 0.75, 0.9)
    blocks, _ = Block().options(candidate, levels)
    options = [o for o in blocks if (o.param("bk"), o.param("bn")) in shapes]
    options += Channel().options(candidate, (0.5, 0.75))[0]
    options += [o for o in NM().options(candidate)[0] if o.params == (("m", 4), ("n", 2))]
    options += Unstructured().options(candidate, (0.75,))[0]
    return options


def session(model: onnx.ModelProto, threads: int, spin: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def timed(sess: ort.InferenceSession, feed: dict, runs: int) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        sess.run(None, feed)
    return (time.perf_counter() - start) / runs


def compare(
    dense: ort.InferenceSession,
    other: ort.InferenceSession,
    feed: dict,
    rounds: int,
    target_s: float = 0.02,
) -> tuple[float, float, float]:
    """(dense median s, other median s, median of per-pair dense/other ratios)."""
    for _ in range(3):
        dense.run(None, feed)
        other.run(None, feed)
    one = max(timed(dense, feed, 3), 1e-6)
    runs = max(1, int(target_s / one))
    a_times, b_times, ratios = [], [], []
    for r in range(rounds):
        if r % 2:  # alternate which goes first
            b, a = timed(other, feed, runs), timed(dense, feed, runs)
        else:
            a, b = timed(dense, feed, runs), timed(other, feed, runs)
        a_times.append(a)
        b_times.append(b)
        ratios.append(a / b)
    return float(np.median(a_times)), float(np.median(b_times)), float(np.median(ratios))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--no-spin", action="store_true", help="disable ORT's intra-op thread spinning"
    )
    parser.add_argument("--quick", action="store_true", help="fewer options per shape")
    args = parser.parse_args(argv)

    cases = [
        matmul_case(128, 768, 3072),
        matmul_case(128, 3072, 768),
        matmul_case(1024, 384, 1536),
        conv_case(64, 64, 56),
        conv_case(256, 256, 14),
    ]
    print(
        f"# onnxruntime {ort.__version__}, {args.threads} threads, spinning "
        f"{'off' if args.no_spin else 'on'}, {args.rounds} interleaved rounds, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print("| shape | option | dense ms | option ms | speedup (median of ratios) |")
    print("|---|---|---|---|---|")
    started = time.perf_counter()
    for case in cases:
        candidate = candidate_of(case)
        feed = {
            candidate.sites[0].activation: np.random.default_rng(1)
            .standard_normal(case.shape)
            .astype(np.float32)
        }
        dense = session(dense_isolated_model(candidate), args.threads, not args.no_spin)
        for option in options_for(candidate, args.quick):
            other = session(isolated_model(candidate, option), args.threads, not args.no_spin)
            a, b, ratio = compare(dense, other, feed, args.rounds)
            print(
                f"| {case.label} | {option_label(option)} | {a * 1e3:.2f} | {b * 1e3:.2f} "
                f"| {ratio:.2f}x |",
                flush=True,
            )
    print(f"\n# took {time.perf_counter() - started:.0f} s, load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
