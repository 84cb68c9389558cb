"""Global recovery alone, at equal speed: tune an already pruned model and score both.

    .venv/bin/python benchmarks/recover_only.py DENSE.onnx PRUNED.onnx CALIB_DIR SECONDS OUT.onnx

The calibration folder is split as a run splits it (fit / search / verify). PRUNED is tuned on
the fit part toward DENSE's outputs (:func:`onnxprune.recover.tune.recover_globally`, the search
part picks the best state), and the one-shot and the recovered model's relative and channel
errors on the verify part are printed; the recovered model is written to OUT for the task
metric (``models/build_benchmarks.py --score …``). The allocation is PRUNED's, so the speed is
the same: this isolates what recovery adds (docs/recovery.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import onnx
import onnxruntime as ort

from onnxprune.calib.collect import padding_masks
from onnxprune.calib.dataset import load_calib_dir
from onnxprune.fidelity import compare
from onnxprune.fidelity.channels import probability_outputs
from onnxprune.recover.tune import Targets, recover_globally


def main() -> None:
    dense_path, pruned_path, calib_dir, seconds, out = sys.argv[1:6]
    dense, pruned = onnx.load(dense_path), onnx.load(pruned_path)
    fit, search, verify = load_calib_dir(Path(calib_dir), 100_000).partition()
    print(f"samples: fit {fit.samples}, search {search.samples}, verify {verify.samples}")
    dense_session = ort.InferenceSession(dense_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in dense_session.get_outputs()]

    def run(session, feed):
        return dict(zip(names, session.run(names, feed), strict=True))

    probabilities = probability_outputs(dense.graph)

    def fidelity(model: onnx.ModelProto):
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        return compare(((run(session, f), run(dense_session, f), labels, padding_masks(f))
                        for f, labels in zip(verify.batches, verify.labels, strict=True)),
                       None, None, probabilities)

    before = fidelity(pruned)
    print(f"one-shot:  relative error {before.error:.4f}, channel error "
          f"{before.channel_error:.4f}")
    started = time.monotonic()
    result = recover_globally(
        pruned, Targets.of(fit, lambda f: run(dense_session, f)),
        Targets.of(search, lambda f: run(dense_session, f)), probabilities, float(seconds),
        threads=2)
    print(f"{result.note} (wall {time.monotonic() - started:.0f} s)")
    if result.model is not None:
        after = fidelity(result.model)
        print(f"recovered: relative error {after.error:.4f}, channel error "
              f"{after.channel_error:.4f}")
        onnx.save(result.model, out)


if __name__ == "__main__":
    main()
