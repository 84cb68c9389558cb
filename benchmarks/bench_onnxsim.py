"""The peer in the benchmark: onnxsim's own structured pruning, run the way a user would.

onnxsim 0.8.1 (``pip install "onnxprune[peers]"``) ships post-training pruning as Python
functions, not as CLI flags (``onnxsim --help`` has none). The ones that remove whole channels
(and so can run faster on a stock runtime) are:

* ``apply_structured_pruning(model, sparsity, importance_norm="l2")`` — drops the lowest-L2
  output channels of a MatMul/Gemm/Conv producer whose output reaches exactly one consumer
  through elementwise ops (plus bounded residual/SE/gated shapes), slicing the consumer's input;
* ``apply_structured_wanda_pruning(model, calibration_data, sparsity)`` — the same chains,
  channels ranked by ``|W| * ||X||`` on calibration data (Wanda);
* ``apply_attention_head_pruning`` / ``apply_attention_head_wanda_pruning`` — heads of *fused*
  attention ops (``com.microsoft::Attention`` and kin) only;
* ``apply_pruning_finetune(original, pruned, calibration_data, reg_param=1e-2)`` — refits every
  surviving MatMul/Gemm (not Conv) as a ridge regression on the dense model's activations.

Why it prunes nothing in the transformers here (digits transformer, MiniLM-L6): its chain walker
finds no FFN chain when a bias ``Add`` sits between the up-projection MatMul and an erf-GELU —
which every exported ``Linear`` + GELU has. On a MatMul -> Add(bias) -> erf-GELU -> MatMul graph
``onnxsim.pruning._find_chains`` finds 0 chains, on the same graph without the bias 1, for both
GELU orders (onnxsim's ``Mul(Mul(x, a), 0.5)`` and torch 2.13's ``Mul(x, Mul(0.5, a))``). Its head
pruning only touches fused attention ops, and these exports keep attention as
MatMul/Softmax/MatMul.

``sparsity`` is the fraction of channels removed in every matched chain (not global). Methods
compared here: ``magnitude`` (structured L2 + head pruning), ``wanda`` (their Wanda variants)
and ``wanda+ridge`` (Wanda, then the ridge finetune). A model where the pruned graph keeps every
weight is reported as declined ("prunes nothing"), never timed.

Run as a script so that a crash in the peer cannot take the harness down, one process per model
(importing onnxsim alone takes seconds):

    .venv/bin/python benchmarks/bench_onnxsim.py IN.onnx OUT_DIR --ratios 0.5,0.75 --calib DIR \
        [--methods magnitude,wanda,wanda+ridge] [--calib-samples 128]

writes ``OUT_DIR/<method>_<ratio>.onnx`` for every pruned model and prints one JSON line per
(method, ratio): ``{"method", "ratio", "pruned", "weights_before", "weights_after", "wall_s"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from onnxprune.calib.dataset import load_calib_dir

METHODS = ("magnitude", "wanda", "wanda+ridge")


def calibration_batches(folder: Path, samples: int) -> list[dict[str, np.ndarray]]:
    """The fit part of onnxprune's own split of the same folder, capped at ``samples``.

    onnxprune fits its reconstruction on the first half of the calibration set; the peer gets
    the same samples (capped: onnxsim's ridge finetune holds every activation in memory).
    """
    fit, _, _ = load_calib_dir(folder, 512).partition()
    batches, total = [], 0
    for batch in fit.batches:
        if total >= samples:
            break
        batches.append(dict(batch))
        total += len(next(iter(batch.values())))
    return batches


def weight_count(model: onnx.ModelProto) -> int:
    return int(sum(np.prod(t.dims) for t in model.graph.initializer))


def prune_with_onnxsim(model: onnx.ModelProto, method: str, ratio: float,
                       calib: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    """``model`` with ``ratio`` of the channels of every chain onnxsim matches removed."""
    import onnxsim  # the optional peer; imported here so --help works without it

    providers = ["CPUExecutionProvider"]
    if method == "magnitude":
        pruned = onnxsim.apply_structured_pruning(model, sparsity=ratio)
        return onnxsim.apply_attention_head_pruning(pruned, sparsity=ratio)
    pruned = onnxsim.apply_structured_wanda_pruning(model, calibration_data=calib,
                                                    sparsity=ratio, providers=providers)
    pruned = onnxsim.apply_attention_head_wanda_pruning(pruned, calibration_data=calib,
                                                        sparsity=ratio, providers=providers)
    if method == "wanda+ridge" and weight_count(pruned) < weight_count(model):
        pruned = onnxsim.apply_pruning_finetune(model, pruned, calibration_data=calib,
                                                providers=providers)
    return pruned


def output_path(folder: Path, method: str, ratio: float) -> Path:
    return folder / f"{method.replace('+', '_')}_{ratio:g}.onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--ratios", required=True, help="comma-separated fractions, e.g. 0.5,0.75")
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--calib-samples", type=int, default=128)
    args = parser.parse_args()
    model = onnx.load(str(args.model))
    calib = calibration_batches(args.calib, args.calib_samples)
    before = weight_count(model)
    declined: set[str] = set()
    for method in args.methods.split(","):
        for ratio in (float(r) for r in args.ratios.split(",")):
            if method in declined:
                break  # what a ratio of nothing removes does not depend on the ratio
            started = time.monotonic()
            # The ridge refit only refits what Wanda pruned: nothing, where Wanda declined.
            pruned = (model if method.split("+")[0] in declined
                      else prune_with_onnxsim(model, method, ratio, calib))
            after = weight_count(pruned)
            if after < before:
                onnx.checker.check_model(pruned)
                # Written whole or not at all: a half-written model must never be timed.
                out = output_path(args.out_dir, method, ratio)
                fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=args.out_dir)
                os.close(fd)
                onnx.save(pruned, tmp)
                os.replace(tmp, out)
            else:
                declined.add(method)
            print(json.dumps({"method": method, "ratio": ratio, "pruned": after < before,
                              "weights_before": before, "weights_after": after,
                              "wall_s": round(time.monotonic() - started, 2)}), flush=True)


if __name__ == "__main__":
    main()
