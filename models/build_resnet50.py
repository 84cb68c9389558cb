"""Build a ResNet-50 (torchvision's v1.5 architecture) into .cache/bench/ for *latency* work.

    .venv/bin/python -m pip install torch==2.13.0
    .venv/bin/python models/build_resnet50.py [--out .cache/bench]

Why random weights: the ImageNet weights torchvision would load come from a model hub, which this
project's machines cannot reach, and no package in the registry ships them. The file is still the
graph a user exports (bottleneck blocks, residual Adds, downsample projections; batch norm folded
into the convs by the exporter), so its latency table, its structures and groups and its measured
Amdahl bound are those of the real model; its *accuracy* after pruning means nothing and is never
reported. The batch-norm statistics are drawn (seeded) so the folded weights are not a trivial
scaling of the initializer.

Writes ``resnet50.onnx`` (input ``input`` float32 [batch, 3, 224, 224], output ``logits``
[batch, 1000]) and ``resnet50_calib/``: 16 ImageNet photos from
``../shared/data/imagenet-sample-224/`` (read in place, never copied), ImageNet-normalized, one
per ``batch_NNN.npz``, enough to run the pipeline end to end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_benchmarks import check_onnx, export_torch  # noqa: E402
from shipped_onnx import DEFAULT_IMAGES as PHOTOS  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def build_net():
    """ResNet-50 v1.5 as torchvision defines it, seeded weights and BN statistics, eval mode.

    Written here, 30 lines, rather than imported: torchvision's wheels on the registry are built
    against CUDA torch and fail to load their operators beside the CPU torch this project pins.
    """
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
            )  # fmt: skip
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            skip = x if self.down is None else self.down(x)
            return torch.relu(self.body(x) + skip)

    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
    ]  # fmt: skip
    cin = 64
    for width, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for b in range(blocks):
            layers.append(Bottleneck(cin, width, stride if b == 0 else 1))
            cin = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    net = nn.Sequential(*layers)
    torch.manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return net.eval()


def write_calib(out: Path, count: int = 16) -> None:
    from PIL import Image

    files = sorted(p for p in PHOTOS.glob("*.jpg"))[:count]
    if not files:
        raise SystemExit(f"no photos under {PHOTOS}: see its README")
    out.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        img = np.asarray(Image.open(f).convert("RGB").resize((224, 224)), np.float32) / 255.0
        x = ((img.transpose(2, 0, 1) - MEAN) / STD)[None].astype(np.float32)
        np.savez(out / f"batch_{i:03d}.npz", input=x)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(".cache/bench"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "resnet50.onnx"
    exporter = export_torch(
        build_net(),
        [torch.randn(2, 3, 224, 224)],
        path,
        input_names=["input"],
        output_names=["logits"],
        dims=[{0: ("batch", 1, 64)}],
    )
    check_onnx(path)
    write_calib(a.out / "resnet50_calib")
    print(f"[resnet50] {path} ({path.stat().st_size / 1e6:.1f} MB), {exporter}")


if __name__ == "__main__":
    main()
