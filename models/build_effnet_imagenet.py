"""EfficientNet-Lite0 on labelled ImageNet photos: a calibration set and a top-1 eval set.

    .venv/bin/python models/build_effnet_imagenet.py [--out .cache/bench] [--images DIR]
    .venv/bin/python models/build_effnet_imagenet.py --score DENSE.onnx PRUNED.onnx

Needs ``effnet_lite0.onnx`` (``models/build_benchmarks.py --only effnet``) and the 1,000 photos of
``../shared/data/imagenet-sample-224/`` (one per ImageNet-1k class, read in place, never copied).
The class index of a photo is the position of its wnid in the sorted list of the 1,000 wnids;
the split is by class index: **even** classes calibrate (500 photos, ``effnet_imagenet_calib/``),
**odd** classes are held out for scoring (500 photos, ``effnet_imagenet_eval.npz``), so no class
is in both. One eval photo is 0.2 points of top-1; the standard error of a top-1 near 70% is about
2 points. Scoring prints top-1 against the labels for both models and top-1 agreement of the
pruned model with the dense one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shipped_onnx import DEFAULT_IMAGES, NUM_THREADS, main  # noqa: E402

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CALIB_BATCH = 16


def labelled_photos(images: Path) -> list[tuple[Path, int]]:
    """(path, class index) of every photo, in class order."""
    paths = sorted(images.glob("n*_*.jpg"))
    wnids = sorted({p.name.split("_", 1)[0] for p in paths})
    if len(wnids) != 1000:
        raise SystemExit(f"{images}: expected photos of 1,000 ImageNet classes, found {len(wnids)}")
    index = {w: i for i, w in enumerate(wnids)}
    return [(p, index[p.name.split("_", 1)[0]]) for p in paths]


def effnet_input(paths: list[Path]) -> np.ndarray:
    """NCHW float32, ImageNet mean/std, as models/build_benchmarks.py feeds EfficientNet-Lite0."""
    from PIL import Image

    x = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0
                  for p in paths])
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = NUM_THREADS
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def logits_of(path: Path, x: np.ndarray) -> np.ndarray:
    sess = session(path)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 16]})[0] for i in range(0, len(x), 16)])


def build(out: Path, images: Path) -> None:
    model = out / "effnet_lite0.onnx"
    if not model.is_file():
        raise SystemExit(f"{model} not found: run models/build_benchmarks.py --only effnet first")
    photos = labelled_photos(images)
    calib = [(p, c) for p, c in photos if c % 2 == 0]
    held = [(p, c) for p, c in photos if c % 2 == 1]
    x_cal = effnet_input([p for p, _ in calib])
    y_cal = np.array([c for _, c in calib], dtype=np.int64)
    folder = out / "effnet_imagenet_calib"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.npz"):
        old.unlink()
    for i, start in enumerate(range(0, len(x_cal), CALIB_BATCH)):
        np.savez(folder / f"batch_{i:03d}.npz", input=x_cal[start:start + CALIB_BATCH],
                 __labels__=y_cal[start:start + CALIB_BATCH])
    x_ev = effnet_input([p for p, _ in held])
    y_ev = np.array([c for _, c in held], dtype=np.int64)
    dense = logits_of(model, x_ev)
    np.savez(out / "effnet_imagenet_eval.npz", input=x_ev, labels=y_ev, dense_logits=dense)
    top1 = float((dense.argmax(1) == y_ev).mean())
    cal_top1 = float((logits_of(model, x_cal).argmax(1) == y_cal).mean())
    print(f"[effnet-imagenet] calib {len(x_cal)} photos (even classes) -> {folder}; eval "
          f"{len(x_ev)} photos (odd classes): dense top-1 {top1:.3f} (calib half {cal_top1:.3f})")


def score(dense_path: Path, pruned_path: Path, out: Path) -> dict[str, float]:
    data = np.load(out / "effnet_imagenet_eval.npz")
    x, labels = data["input"], data["labels"]
    dense = logits_of(dense_path, x)
    pruned = logits_of(pruned_path, x)
    result = {
        "dense_top1": float((dense.argmax(1) == labels).mean()),
        "pruned_top1": float((pruned.argmax(1) == labels).mean()),
        "top1_agreement": float((pruned.argmax(1) == dense.argmax(1)).mean()),
    }
    result["top1_drop_points"] = 100 * (result["dense_top1"] - result["pruned_top1"])
    print(f"[effnet-imagenet] {pruned_path} on {len(x)} held-out photos: "
          + " ".join(f"{k}={v:.4f}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    assert DEFAULT_IMAGES  # the shared photos' default location (shipped_onnx.py)
    main(__doc__, build, score, "score MODEL_B (pruned) against MODEL_A (dense) on the eval half")
