"""One MatMul layer's neurons cut alone: what the layer error says and what the output feels.

    .venv/bin/python benchmarks/layer_cut.py MODEL.onnx NODE CALIB_DIR KEEP [OUTPUT]

NODE is a MatMul whose second input is a weight initializer (MiniLM-L6's FFN down projection
``node_MatMul_227``, say) followed by a bias Add. Its input is collected on the first half of
the calibration batches, its input neurons are cut to KEEP by structured OBS
(:func:`onnxprune.reconstruct.structured.remove_channels`, with and without the bias fold), and
the script prints:

- how concentrated the layer's output energy is (share of the five largest channels);
- the energy-weighted layer error ``tr(ΔW H ΔWᵀ)/tr(W H Wᵀ)`` beside the per-channel one the DP
  ranks by first (``onnxprune.solve.database.layer_errors``) and the median channel's error, on the
  held-out half;
- the relative error of OUTPUT (default: the model's first output), mean over positions, on the
  held-out half when only this layer is cut (padded positions left out where an
  ``attention_mask`` input exists).

This is the measurement behind docs/recovery.md, "The DP's layer error, channel by channel".
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxprune.reconstruct.structured import remove_channels
from onnxprune.solve.database import ENERGY_FLOOR, layer_errors


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def main() -> None:
    if len(sys.argv) not in (5, 6):
        raise SystemExit(__doc__)
    model_path, name = sys.argv[1], sys.argv[2]
    calib_dir, keep = Path(sys.argv[3]), int(sys.argv[4])
    model = onnx.load(model_path)
    output = sys.argv[5] if len(sys.argv) == 6 else model.graph.output[0].name
    inits = {i.name: i for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == name)
    x_name, w_name = node.input
    add = next(n for n in model.graph.node if node.output[0] in n.input and n.op_type == "Add")
    b_name = next(i for i in add.input if i in inits)
    W = numpy_helper.to_array(inits[w_name]).T.astype(np.float64)  # [N outputs, K inputs]
    b = numpy_helper.to_array(inits[b_name]).astype(np.float64)
    inputs = [i.name for i in model.graph.input]

    probe = copy.deepcopy(model)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(x_name, onnx.TensorProto.FLOAT,
                                                                 None))
    dense = _session(probe)
    batches = [dict(np.load(f)) for f in sorted(calib_dir.glob("*.npz"))]
    fit, held = batches[: len(batches) // 2], batches[len(batches) // 2:]

    def rows_of(batch: dict) -> tuple[dict, np.ndarray]:
        feed = {k: batch[k] for k in inputs}
        x = dense.run([x_name], feed)[0]
        keep_rows = (batch["attention_mask"].reshape(-1) > 0 if "attention_mask" in batch
                     else np.ones(x.size // x.shape[-1], bool))
        return feed, x.reshape(-1, x.shape[-1])[keep_rows].astype(np.float64)

    def hessian(xs: list[np.ndarray]) -> np.ndarray:
        X = np.concatenate(xs)
        Xa = np.concatenate([X, np.ones((len(X), 1))], 1)
        return 2 * Xa.T @ Xa / len(X)

    Ha = hessian([rows_of(bt)[1] for bt in fit])
    Hh = hessian([rows_of(bt)[1] for bt in held])[:-1, :-1]
    H, mean = Ha[:-1, :-1], Ha[:-1, -1]
    energy = np.einsum("nk,kl,nl->n", W, Hh, W)
    print(f"{name}: {W.shape[0]} output channels; the five largest carry "
          f"{np.sort(energy)[-5:].sum() / energy.sum():.1%} of the output energy "
          f"(RMS {np.sqrt(energy.max() / 2):.3g} largest, {np.sqrt(np.median(energy) / 2):.3g} "
          "median)")

    def end_to_end(weight: np.ndarray, bias: np.ndarray) -> float:
        cut = copy.deepcopy(model)
        for init in cut.graph.initializer:
            if init.name == w_name:
                init.CopyFrom(numpy_helper.from_array(weight.T.astype(np.float32), w_name))
            elif init.name == b_name:
                init.CopyFrom(numpy_helper.from_array(bias.astype(np.float32), b_name))
        pruned, errors = _session(cut), []
        for batch in held:
            feed = {k: batch[k] for k in inputs}
            y, yp = dense.run([output], feed)[0], pruned.run([output], feed)[0]
            rel = np.linalg.norm(yp - y, axis=-1) / np.maximum(np.linalg.norm(y, axis=-1), 1e-12)
            if "attention_mask" in batch and rel.shape == batch["attention_mask"].shape:
                rel = rel[batch["attention_mask"] > 0]
            errors.append(rel.reshape(-1))
        return float(np.concatenate(errors).mean())

    for label, kwargs in (("plain", {}), ("bias folded", {"bias": b, "mean": mean})):
        solved = remove_channels(W, H, 1, [keep], **kwargs)[keep]
        D = solved.weight - W
        per_channel, weighted = layer_errors(W, D, Hh)
        median = np.median(np.einsum("nk,kl,nl->n", D, Hh, D)
                           / np.maximum(energy, ENERGY_FLOOR * np.median(energy)))
        bias = solved.bias if solved.bias is not None else b
        print(f"keep {keep}/{W.shape[1]} ({label}): energy-weighted error {weighted:.4f}, "
              f"per-channel {per_channel:.4f} (median channel {median:.3f}); "
              f"{output} relative error {end_to_end(solved.weight, bias):.4f}")


if __name__ == "__main__":
    main()
