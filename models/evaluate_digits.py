"""Held-out accuracy of a digits model (dense or pruned) on the 300-sample eval split.

Usage: .venv/bin/python models/evaluate_digits.py MODEL.onnx [MODEL.onnx ...]
The input layout (flat / image / sequence) is read from the model's input rank.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

EVAL = Path(__file__).resolve().parent / "data" / "digits_eval.npz"
LAYOUT_BY_RANK = {2: "input_flat", 3: "input_seq", 4: "input_img"}


def accuracy(path: str) -> float:
    data = np.load(EVAL)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    x = data[LAYOUT_BY_RANK[len(model_input.shape)]]
    scores = session.run(None, {model_input.name: x})[-1]
    return float(np.mean(np.argmax(scores, -1) == data["labels"]))


def main(paths: list[str]) -> None:
    for path in paths:
        print(f"held-out accuracy (300 digits): {accuracy(path):.4f}  {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
