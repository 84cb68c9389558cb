"""Export the tiny models of ``tests/data/exports/``: both torch exporters, opsets 11 to 21.

    .venv/bin/python models/export_test_models.py   (needs the ``models`` extra)

Real exporters write graphs hand-built tests never think of (Constant nodes, Shape/Gather
chains for dynamic dims, Transpose'd weights, the dynamo exporter's naming), and each opset
spells some ops differently (Split, Unsqueeze, Reduce*, LayerNormalization). The tests prune each
file here (``tests/test_exports.py``), so they need neither torch nor onnxscript. Written:

* ``cnn_ts_opset{11,13,17}.onnx`` — conv → BN → ReLU → depthwise → conv → pool → linear,
  ``torch.onnx.export(dynamo=False)`` (TorchScript exporter);
* ``cnn_dynamo_opset18.onnx`` — the same, ``dynamo=True``; ``cnn_dynamo_opset21.onnx`` — that
  file converted with ``onnx.version_converter`` (the dynamo exporter writes opset 18+ only);
* ``encoder_ts_opset{14,17}.onnx``, ``encoder_dynamo_opset18.onnx`` — a one-layer transformer
  encoder over int64 token ids with an int64 attention mask (embedding, masked multi-head
  attention, GELU FFN, LayerNorm, mean-pooled classifier);
* ``mlp_helper_opset{11..21}.onnx`` — an ``onnx.helper`` graph at every opset from 11 to 21
  (Gemm, MatMul, the five-op GELU, Split with the attribute before 13 and the input after,
  a residual Add);
* ``manifest.json`` — per file: exporter, opset, inputs (name, dtype, shape with "batch" for
  the dynamic dim) and, for token inputs, the vocabulary size.

Every file is checked (``onnx.checker`` full check) and run in ONNX Runtime at two batch sizes
against the framework's output before it is written. Weights are seeded; files stay < 100 KB.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper, version_converter

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "exports"
VOCAB = 20
SEQ = 6
MAX_BYTES = 100_000


# ----------------------------------------------------------------------------- torch models
def _torch_modules():
    import torch
    from torch import nn

    class TinyCnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(8)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.bn2 = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
            self.fc = nn.Linear(12, 5)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.dw(x)))
            x = torch.relu(self.conv2(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    class TinyEncoder(nn.Module):
        """Embedding → masked MHA (2 heads) + residual → LayerNorm → GELU FFN + residual →
        LayerNorm → masked mean pool → classifier."""

        def __init__(self, d: int = 16, heads: int = 2, hidden: int = 32) -> None:
            super().__init__()
            self.heads, self.hd = heads, d // heads
            self.emb = nn.Embedding(VOCAB, d)
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.up, self.down = nn.Linear(d, hidden), nn.Linear(hidden, d)
            self.cls = nn.Linear(d, 3)

        def _split(self, t):
            b, s, _ = t.shape
            return t.reshape(b, s, self.heads, self.hd).transpose(1, 2)

        def forward(self, ids, mask):
            x = self.emb(ids)
            b, s, d = x.shape
            q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.hd)
            keep = mask[:, None, None, :].to(scores.dtype)
            scores = scores + (1.0 - keep) * -10000.0
            ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d)
            x = self.ln1(x + self.o(ctx))
            x = self.ln2(x + self.down(nn.functional.gelu(self.up(x))))
            weights = mask.to(x.dtype)[:, :, None]
            pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            return self.cls(pooled)

    return TinyCnn, TinyEncoder


def _seeded(cls):
    import torch

    torch.manual_seed(0)
    model = cls().eval()
    for module in model.modules():  # BN statistics that are not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model


def _token_inputs(batch: int, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, SEQ), generator=gen)
    mask = torch.ones(batch, SEQ, dtype=torch.int64)
    mask[:, SEQ - 2:] = torch.randint(0, 2, (batch, 2), generator=gen)
    return ids, mask


def _export_torch(model, args, names, path: Path, opset: int, dynamo: bool) -> None:
    import torch

    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=1024)
        shapes = {name: {0: batch} for name in names}
        program = torch.onnx.export(model, args, dynamo=True, opset_version=opset,
                                    input_names=list(names), output_names=["y"],
                                    dynamic_shapes=shapes, optimize=True,
                                    external_data=False)
        program.save(str(path))
    else:
        axes = {name: {0: "batch"} for name in [*names, "y"]}
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=opset,
                          input_names=list(names), output_names=["y"], dynamic_axes=axes,
                          do_constant_folding=True)


# ----------------------------------------------------------------------------- helper graphs
def helper_mlp(opset: int) -> onnx.ModelProto:
    """x[batch, 6] → Gemm(transB) → GELU (five ops) → MatMul → Split → Add → + x → MatMul → y."""
    rng = np.random.default_rng(opset)
    inits, nodes = [], []

    def const(name: str, value) -> str:
        value = np.asarray(value)
        inits.append(numpy_helper.from_array(
            value if value.dtype == np.int64 else value.astype(np.float32), name))
        return name

    nodes.append(helper.make_node("Gemm", ["x", const("w1", rng.standard_normal((16, 6)) / 3),
                                           const("b1", rng.standard_normal(16) * 0.1)],
                                  ["h1"], name="fc1", transB=1))
    nodes += [
        helper.make_node("Div", ["h1", const("sqrt2", np.array(1.4142135))], ["g1"], name="g_div"),
        helper.make_node("Erf", ["g1"], ["g2"], name="g_erf"),
        helper.make_node("Add", ["g2", const("one", np.array(1.0))], ["g3"], name="g_add"),
        helper.make_node("Mul", ["h1", "g3"], ["g4"], name="g_mul"),
        helper.make_node("Mul", ["g4", const("half", np.array(0.5))], ["g5"], name="g_half"),
        helper.make_node("MatMul", ["g5", const("w2", rng.standard_normal((16, 12)) / 4)],
                         ["h2"], name="fc2"),
    ]
    if opset >= 13:
        nodes.append(helper.make_node("Split", ["h2", const("sizes", np.array([6, 6]))],
                                      ["s1", "s2"], name="split", axis=1))
    else:
        nodes.append(helper.make_node("Split", ["h2"], ["s1", "s2"], name="split", axis=1,
                                      split=[6, 6]))
    nodes += [
        helper.make_node("Add", ["s1", "s2"], ["m"], name="merge"),
        helper.make_node("Add", ["m", "x"], ["r"], name="residual"),
        helper.make_node("Relu", ["r"], ["a"], name="relu"),
        helper.make_node("MatMul", ["a", const("w3", rng.standard_normal((6, 4)) / 2)], ["y"],
                         name="head"),
    ]
    graph = helper.make_graph(
        nodes, f"mlp_opset{opset}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             producer_name="onnx.helper")


# ----------------------------------------------------------------------------- checks & writing
def _feed(inputs: list[dict], batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in inputs:
        shape = [batch if d == "batch" else d for d in spec["shape"]]
        if spec["name"] == "ids":
            feed["ids"] = rng.integers(0, VOCAB, shape).astype(np.int64)
        elif spec["name"] == "mask":
            mask = np.ones(shape, np.int64)
            mask[:, -2:] = rng.integers(0, 2, (shape[0], 2))
            feed["mask"] = mask
        else:
            feed[spec["name"]] = rng.standard_normal(shape).astype(np.float32)
    return feed


def _check(path: Path, inputs: list[dict], reference=None) -> None:
    """Full checker, size, ORT at two batch sizes (and against ``reference(feed)`` if given)."""
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    size = path.stat().st_size
    assert size < MAX_BYTES, f"{path.name} is {size} bytes"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        feed = _feed(inputs, batch, seed=batch)
        (y,) = session.run(None, feed)
        assert y.shape[0] == batch, (path.name, y.shape)
        if reference is not None:
            np.testing.assert_allclose(y, reference(feed), rtol=1e-4, atol=1e-4)


def _write(model: onnx.ModelProto, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    onnx.save(model, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main() -> None:
    import torch

    OUT.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, dict] = {}
    cnn_cls, encoder_cls = _torch_modules()
    image = [{"name": "x", "dtype": "float32", "shape": ["batch", 3, 8, 8]}]
    tokens = [{"name": "ids", "dtype": "int64", "shape": ["batch", SEQ]},
              {"name": "mask", "dtype": "int64", "shape": ["batch", SEQ]}]

    def torch_reference(model, names):
        def run(feed):
            with torch.no_grad():
                return model(*[torch.from_numpy(feed[n]) for n in names]).numpy()
        return run

    jobs = [("cnn", cnn_cls, image, ["x"], [(11, False), (13, False), (17, False), (18, True)]),
            ("encoder", encoder_cls, tokens, ["ids", "mask"],
             [(14, False), (17, False), (18, True)])]
    for stem, cls, inputs, names, exports in jobs:
        model = _seeded(cls)
        args = (torch.randn(2, 3, 8, 8),) if stem == "cnn" else _token_inputs(2, 0)
        for opset, dynamo in exports:
            path = OUT / f"{stem}_{'dynamo' if dynamo else 'ts'}_opset{opset}.onnx"
            with tempfile.TemporaryDirectory() as tmp:
                raw = Path(tmp) / path.name
                _export_torch(model, args, names, raw, opset, dynamo)
                exported = onnx.load(raw)
            exported.producer_name = exported.producer_name or "pytorch"
            _write(exported, path)
            _check(path, inputs, torch_reference(model, names))
            manifest[path.name] = {"exporter": "torch.onnx dynamo" if dynamo
                                   else "torch.onnx torchscript", "opset": opset,
                                   "inputs": inputs, "vocab": VOCAB if stem == "encoder" else None}
            print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")
        if stem == "cnn":  # the dynamo exporter writes 18+; the converter brings it to 21
            source = OUT / "cnn_dynamo_opset18.onnx"
            converted = version_converter.convert_version(onnx.load(source), 21)
            path = OUT / "cnn_dynamo_opset21.onnx"
            _write(converted, path)
            _check(path, inputs, torch_reference(model, names))
            manifest[path.name] = {"exporter": "torch.onnx dynamo + onnx.version_converter",
                                   "opset": 21, "inputs": inputs, "vocab": None}
            print(f"wrote {path.relative_to(ROOT)}")
    vector = [{"name": "x", "dtype": "float32", "shape": ["batch", 6]}]
    for opset in range(11, 22):
        path = OUT / f"mlp_helper_opset{opset}.onnx"
        _write(helper_mlp(opset), path)
        _check(path, vector)
        manifest[path.name] = {"exporter": "onnx.helper", "opset": opset, "inputs": vector,
                               "vocab": None}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(manifest)} models and manifest.json to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
