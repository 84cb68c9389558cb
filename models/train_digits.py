"""Train, export and check the three small digits models used by the onnxprune tests.

    .venv/bin/python models/train_digits.py [--only mlp|cnn|transformer]

Writes (relative to the repository root):

* ``models/digits_mlp.onnx``          scikit-learn MLPClassifier, exported with skl2onnx
* ``models/digits_cnn.onnx``          small torch CNN, exported with torch.onnx.export (dynamo)
* ``models/digits_transformer.onnx``  small torch transformer encoder, torch.onnx.export (dynamo)
* ``models/data/digits_eval.npz``     the held-out eval split (300 samples), all three layouts
* ``calibration/<model_stem>/batch_NNN.npz``  the calibration split (240 samples), see
  ``calibration/README.md`` for the format

Data: ``sklearn.datasets.load_digits`` (1797 8x8 images, pixel values 0..16, 10 classes),
preprocessed as ``X / 16`` (float32, in [0, 1]) for every model; only the layout differs:
MLP ``[N, 64]``, CNN ``[N, 1, 8, 8]``, transformer ``[N, 8, 8]`` (8 tokens = rows, 8 features).

Split: ``numpy.random.default_rng(SPLIT_SEED).permutation(1797)``; the first 300 indices are
the eval split, the next 240 the calibration split, the remaining 1257 the training split.
The three splits are disjoint.

Every model is checked after export: ``onnx.checker.check_model(full_check=True)``, ONNX Runtime
outputs compared with the framework's outputs on the eval split, and the held-out accuracy is
measured with ONNX Runtime (CPUExecutionProvider).
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "models"
CALIB_DIR = ROOT / "calibration"
EVAL_PATH = MODELS_DIR / "data" / "digits_eval.npz"

SPLIT_SEED = 20240601
N_EVAL = 300
N_CALIB = 240
CALIB_BATCH = 48  # 240 / 48 = 5 batch files per model
TRAIN_SEED = 0
OPSET = 18
NUM_THREADS = 2
DOC_STRING = "onnxprune test model trained on sklearn load_digits (models/train_digits.py)"


# ----------------------------------------------------------------------------- data


def load_splits() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Returns {'train'|'calib'|'eval': (X float32 [n, 64] in [0, 1], y int64 [n], indices)}."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data.astype(np.float32) / np.float32(16.0)).astype(np.float32)
    y = digits.target.astype(np.int64)
    assert x.shape == (1797, 64)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    idx = {
        "eval": perm[:N_EVAL],
        "calib": perm[N_EVAL : N_EVAL + N_CALIB],
        "train": perm[N_EVAL + N_CALIB :],
    }
    assert len(set(idx["eval"]) | set(idx["calib"]) | set(idx["train"])) == len(x)
    return {k: (x[v], y[v], v) for k, v in idx.items()}


def as_flat(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(-1, 64), dtype=np.float32)


def as_img(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(-1, 1, 8, 8), dtype=np.float32)


def as_seq(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(-1, 8, 8), dtype=np.float32)


def write_eval(splits) -> None:
    x, y, idx = splits["eval"]
    EVAL_PATH.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        EVAL_PATH,
        input_flat=as_flat(x),
        input_img=as_img(x),
        input_seq=as_seq(x),
        labels=y.astype(np.int64),
        indices=idx.astype(np.int64),
    )
    print(f"wrote {EVAL_PATH.relative_to(ROOT)} ({len(y)} samples)")


def write_calibration(stem: str, input_name: str, x: np.ndarray, y: np.ndarray) -> None:
    out = CALIB_DIR / stem
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("batch_*.npz"):
        old.unlink()
    n_files = 0
    for b, start in enumerate(range(0, len(x), CALIB_BATCH)):
        np.savez_compressed(
            out / f"batch_{b:03d}.npz",
            **{
                input_name: np.ascontiguousarray(x[start : start + CALIB_BATCH], dtype=np.float32),
                "__labels__": y[start : start + CALIB_BATCH].astype(np.int64),
            },
        )
        n_files += 1
    print(f"wrote {out.relative_to(ROOT)}/ ({len(x)} samples in {n_files} batch files)")


# ----------------------------------------------------------------------------- checks


def ort_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = NUM_THREADS
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def check_onnx(path: Path) -> onnx.ModelProto:
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ext = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert not ext, f"external data in {path}: {ext}"
    return model


def summarize(path: Path, model: onnx.ModelProto) -> None:
    from collections import Counter

    ops = Counter(n.op_type for n in model.graph.node)
    n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    size_kb = path.stat().st_size / 1024
    print(
        f"  {path.name}: ir_version={model.ir_version} "
        f"opsets={ {o.domain or 'ai.onnx': o.version for o in model.opset_import} } "
        f"size={size_kb:.1f} KiB initializer_elements={n_params}"
    )
    print(f"  ops: {dict(sorted(ops.items()))}")
    for v in model.graph.input:
        print(f"  input  {v.name}: {_shape(v)}")
    for v in model.graph.output:
        print(f"  output {v.name}: {_shape(v)}")


def _shape(v) -> str:
    t = v.type.tensor_type
    dims = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in t.shape.dim]
    return f"{onnx.TensorProto.DataType.Name(t.elem_type)} {dims}"


def name_batch_dim(model: onnx.ModelProto, batch_dim_name: str = "batch") -> None:
    """Names the (symbolic or unset) leading dim of every graph input/output ``batch_dim_name``."""
    for vi in list(model.graph.input) + list(model.graph.output):
        dim0 = vi.type.tensor_type.shape.dim[0]
        if dim0.HasField("dim_param") or not dim0.HasField("dim_value"):
            dim0.dim_param = batch_dim_name


def finalize_torch_export(path: Path) -> onnx.ModelProto:
    """Loads a torch export, inlines any external data, names the batch dim, re-saves."""
    model = onnx.load(str(path), load_external_data=True)
    name_batch_dim(model)
    # Drop the per-node Python stack traces: they embed absolute paths of the build checkout
    # (so rebuilds elsewhere would differ byte-wise). Other metadata (namespace,
    # pkg.torch.onnx.name_scopes, ...) is kept: it maps nodes back to torch module names.
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    model.doc_string = DOC_STRING
    for p in path.parent.glob(path.name + ".data"):
        p.unlink()
    onnx.save(model, str(path), save_as_external_data=False)
    return model


def accuracy(logits_or_labels: np.ndarray, y: np.ndarray) -> float:
    pred = logits_or_labels if logits_or_labels.ndim == 1 else logits_or_labels.argmax(-1)
    return float((pred == y).mean())


# ----------------------------------------------------------------------------- MLP


def build_mlp(splits) -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier

    t0 = time.time()
    xtr, ytr, _ = splits["train"]
    xev, yev, _ = splits["eval"]
    clf = MLPClassifier(
        hidden_layer_sizes=(256, 128),
        activation="relu",
        solver="adam",
        alpha=1e-4,
        batch_size=64,
        learning_rate_init=1e-3,
        max_iter=200,
        random_state=TRAIN_SEED,
    )
    clf.fit(as_flat(xtr), ytr)
    sk_acc = accuracy(clf.predict(as_flat(xev)), yev)

    path = MODELS_DIR / "digits_mlp.onnx"
    onx = to_onnx(
        clf,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    name_batch_dim(onx)
    onx.doc_string = DOC_STRING
    onnx.save(onx, str(path), save_as_external_data=False)
    model = check_onnx(path)

    sess = ort_session(path)
    out_names = [o.name for o in sess.get_outputs()]
    label, proba = sess.run(None, {"input": as_flat(xev)})
    assert out_names == ["label", "probabilities"], out_names
    np.testing.assert_allclose(proba, clf.predict_proba(as_flat(xev)), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(label, clf.predict(as_flat(xev)))
    acc = accuracy(proba, yev)
    n_params = sum(w.size for w in clf.coefs_) + sum(b.size for b in clf.intercepts_)
    print(
        f"[mlp] sklearn eval acc={sk_acc:.4f}  ONNX Runtime eval acc={acc:.4f} "
        f"(n={len(yev)}), params={n_params}, "
        f"{time.time() - t0:.1f}s"
    )
    summarize(path, model)
    xc, yc, _ = splits["calib"]
    write_calibration("digits_mlp", "input", as_flat(xc), yc)


# ----------------------------------------------------------------------------- torch helpers


def seed_torch(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)


def train_torch(net, xtr, ytr, *, epochs: int, lr: float, batch: int, wd: float = 0.0, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(xtr)
    yt = torch.from_numpy(ytr)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
    steps = epochs * ((len(xt) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()
    for ep in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        tot = 0.0
        for i in range(0, len(xt), batch):
            sel = perm[i : i + batch]
            opt.zero_grad()
            loss = loss_fn(net(xt[sel]), yt[sel])
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(sel)
        if ep == epochs - 1 or ep % 10 == 0:
            print(f"    epoch {ep:3d} loss {tot / len(xt):.4f}")
    net.eval()
    return net


def export_torch(net, example, path: Path, *, input_name="input", output_name="logits"):
    import torch

    for p in [path, path.parent / (path.name + ".data")]:
        if p.exists():
            p.unlink()
    batch = torch.export.Dim("batch", min=1, max=4096)
    dyn = {"x": {0: batch}}
    prog = torch.onnx.export(
        net,
        (example,),
        dynamo=True,
        input_names=[input_name],
        output_names=[output_name],
        dynamic_shapes=dyn,
        opset_version=OPSET,
        external_data=False,
        optimize=True,
        verbose=False,
    )
    prog.save(str(path), external_data=False)
    return finalize_torch_export(path)


def check_torch_model(name, net, path, x_eval, y_eval, x_calib, y_calib, stem):
    import torch

    model = check_onnx(path)
    sess = ort_session(path)
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    with torch.no_grad():
        ref = net(torch.from_numpy(x_eval)).numpy()
    got = sess.run(None, {"input": x_eval})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    for bs in (1, 7):
        o = sess.run(None, {"input": x_eval[:bs]})[0]
        assert o.shape == (bs, 10), o.shape
        np.testing.assert_allclose(o, ref[:bs], rtol=1e-4, atol=1e-4)
    n_params = sum(p.numel() for p in net.parameters())
    acc_torch = accuracy(ref, y_eval)
    acc = accuracy(got, y_eval)
    print(
        f"[{name}] torch eval acc={acc_torch:.4f}  ONNX Runtime eval acc={acc:.4f} "
        f"(n={len(y_eval)}), params={n_params}, max|ort-torch|={np.abs(got - ref).max():.2e}"
    )
    summarize(path, model)
    write_calibration(stem, "input", x_calib, y_calib)
    return acc


# ----------------------------------------------------------------------------- CNN


def make_cnn():
    import torch
    from torch import nn

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
            self.fc1 = nn.Linear(64 * 4 * 4, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.conv1(x))
            x = torch.relu(self.conv2(x))
            x = self.pool(x)
            x = torch.relu(self.conv3(x))
            x = torch.flatten(x, 1)
            x = torch.relu(self.fc1(x))
            return self.fc2(x)

    return DigitsCNN()


def build_cnn(splits) -> None:
    import torch

    t0 = time.time()
    seed_torch(TRAIN_SEED)
    xtr, ytr, _ = splits["train"]
    xev, yev, _ = splits["eval"]
    xc, yc, _ = splits["calib"]
    net = make_cnn()
    train_torch(net, as_img(xtr), ytr, epochs=30, lr=3e-3, batch=64, wd=1e-4, seed=TRAIN_SEED)
    path = MODELS_DIR / "digits_cnn.onnx"
    export_torch(net, torch.from_numpy(as_img(xev[:2])), path)
    acc = check_torch_model("cnn", net, path, as_img(xev), yev, as_img(xc), yc, "digits_cnn")
    assert acc > 0.95, acc
    print(f"[cnn] done in {time.time() - t0:.1f}s")


# ----------------------------------------------------------------------------- transformer


def make_transformer(d_model=128, n_heads=4, d_mlp=512, n_layers=2, seq=8, feat=8, n_cls=10):
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n_heads = n_heads
            self.d_head = d_model // n_heads
            self.q = nn.Linear(d_model, d_model)
            self.k = nn.Linear(d_model, d_model)
            self.v = nn.Linear(d_model, d_model)
            self.out = nn.Linear(d_model, d_model)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            h, dh = self.n_heads, self.d_head
            q = self.q(x).reshape(b, t, h, dh).transpose(1, 2)  # [b, h, t, dh]
            k = self.k(x).reshape(b, t, h, dh).transpose(1, 2)
            v = self.v(x).reshape(b, t, h, dh).transpose(1, 2)
            att = torch.softmax(q @ k.transpose(-1, -2) * (dh**-0.5), dim=-1)
            y = (att @ v).transpose(1, 2).reshape(b, t, h * dh)
            return self.out(y)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(d_model)
            self.attn = Attention()
            self.ln2 = nn.LayerNorm(d_model)
            self.fc1 = nn.Linear(d_model, d_mlp)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(d_mlp, d_model)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.ln1(x))
            return x + self.fc2(self.act(self.fc1(self.ln2(x))))

    class DigitsTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(feat, d_model)
            self.pos = nn.Parameter(torch.randn(1, seq, d_model) * 0.02)
            self.blocks = nn.ModuleList([Block() for _ in range(n_layers)])
            self.ln_f = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, n_cls)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [b, 8 rows, 8 features]
            h = self.embed(x) + self.pos
            for blk in self.blocks:
                h = blk(h)
            h = self.ln_f(h).mean(dim=1)
            return self.head(h)

    return DigitsTransformer()


def build_transformer(splits) -> None:
    import torch

    t0 = time.time()
    seed_torch(TRAIN_SEED)
    xtr, ytr, _ = splits["train"]
    xev, yev, _ = splits["eval"]
    xc, yc, _ = splits["calib"]
    net = make_transformer()
    train_torch(net, as_seq(xtr), ytr, epochs=60, lr=1e-3, batch=64, wd=1e-2, seed=TRAIN_SEED)
    path = MODELS_DIR / "digits_transformer.onnx"
    export_torch(net, torch.from_numpy(as_seq(xev[:2])), path)
    acc = check_torch_model(
        "transformer", net, path, as_seq(xev), yev, as_seq(xc), yc, "digits_transformer"
    )
    assert acc > 0.93, acc
    print(f"[transformer] done in {time.time() - t0:.1f}s")


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["mlp", "cnn", "transformer"], default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(NUM_THREADS))
    t0 = time.time()
    splits = load_splits()
    print(
        "split sizes: "
        + ", ".join(f"{k}={len(v[1])}" for k, v in splits.items())
        + f" (seed {SPLIT_SEED})"
    )
    write_eval(splits)
    builders = {"mlp": build_mlp, "cnn": build_cnn, "transformer": build_transformer}
    for name, fn in builders.items():
        if args.only in (None, name):
            fn(splits)
    print(f"total {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
