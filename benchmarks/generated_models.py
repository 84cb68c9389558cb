"""Larger generated models for the speed-target benchmark (issue 5), exported with torch.

Speed, not accuracy, is what these measure, so their weights are seeded random initializations;
the graphs are what real exporters produce (torch.onnx.export), with the deployment shapes of the
benchmark (batch x sequence >= 512 rows):

- ``mlp1024.onnx``: an MLP 1024 -> 4096 -> 1024 -> 4096 -> 1024 with GELU, input [rows, 1024].
- ``block384.onnx``: one pre-LN transformer encoder block at hidden 384, 6 heads, MLP 1536,
  input [batch, seq, 384] (BERT-base/MiniLM-like shapes).
- ``crnn_bilstm.onnx``: a CRNN text recognizer at batch 1 (a 32x80 line image): two convs, then
  a bidirectional LSTM unrolled over 20 steps into 80 Gemms that share 4 weights (as exports of
  recurrent cells written step by step look), then a per-step classifier. Issue 13's case.

Usage: .venv/bin/python benchmarks/generated_models.py [--out .cache/bench]
(needs the `models` extra: `make install-models`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, width: int = 1024, hidden: int = 4096) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width), nn.GELU(),
            nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-LN encoder block with explicit q/k/v/out projections (as BERT-style exports have)."""

    def __init__(self, hidden: int = 384, heads: int = 6, mlp: int = 1536) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(hidden)
        self.q, self.k, self.v = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.fc1, self.fc2 = nn.Linear(hidden, mlp), nn.Linear(mlp, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        y = self.ln1(x)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, h // self.heads).transpose(1, 2)

        q, k, v = split(self.q(y)), split(self.k(y)), split(self.v(y))
        att = torch.softmax(q @ k.transpose(-1, -2) / (h // self.heads) ** 0.5, dim=-1)
        x = x + self.out((att @ v).transpose(1, 2).reshape(b, s, h))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


class CRNN(nn.Module):
    """Conv features -> an LSTM per direction, unrolled step by step -> per-step classes."""

    def __init__(self, hidden: int = 128, classes: int = 37, steps: int = 20) -> None:
        super().__init__()
        self.hidden, self.steps = hidden, steps
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d((16, 2)),
        )  # [1, 64, 1, 20]
        self.ih = nn.ModuleList(nn.Linear(64, 4 * hidden) for _ in range(2))
        self.hh = nn.ModuleList(nn.Linear(hidden, 4 * hidden, bias=False) for _ in range(2))
        self.out = nn.Linear(2 * hidden, classes)

    def _direction(self, xs: list[torch.Tensor], d: int) -> list[torch.Tensor]:
        h = torch.zeros(1, self.hidden)
        c = torch.zeros(1, self.hidden)
        hs = []
        for x in xs:
            i, f, g, o = (self.ih[d](x) + self.hh[d](h)).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            hs.append(h)
        return hs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.features(x).flatten(1, 2)  # [1, 64, 20]
        xs = [seq[:, :, t] for t in range(self.steps)]
        forward = self._direction(xs, 0)
        backward = self._direction(xs[::-1], 1)[::-1]
        steps = [self.out(torch.cat([a, b], dim=1)) for a, b in zip(forward, backward,
                                                                      strict=True)]
        return torch.stack(steps, dim=1)


def export(module: nn.Module, example: torch.Tensor, path: Path, dynamic: dict) -> None:
    module.eval()
    torch.onnx.export(module, (example,), str(path), input_names=["input"],
                      output_names=["output"], dynamic_axes=dynamic, dynamo=False,
                      opset_version=17)
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".cache/bench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    export(MLP(), torch.randn(512, 1024), args.out / "mlp1024.onnx", {"input": {0: "rows"},
                                                                         "output": {0: "rows"}})
    export(Block(), torch.randn(4, 128, 384), args.out / "block384.onnx",
           {"input": {0: "batch", 1: "seq"}, "output": {0: "batch", 1: "seq"}})
    export(CRNN(), torch.randn(1, 1, 32, 80), args.out / "crnn_bilstm.onnx", {})


if __name__ == "__main__":
    main()
