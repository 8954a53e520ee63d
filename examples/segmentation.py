"""Semantic segmentation through proqha's Python API, offline, in well under a minute on a CPU.

A small encoder-decoder (a strided encoder, a dilated conv, bilinear upsampling back to the input's size,
concatenated with the full-resolution features) and a synthetic scene set it draws itself (squares, discs and
bars on textured noise; every pixel labelled background, square, disc or bar); then:

    train in float -> quantize -> fit (quantization-aware, mean IoU) -> search_bits (2 steps, ranked by mean IoU)
    -> export_onnx (parity per pixel) -> mean IoU of the exported file in onnxruntime

    python examples/segmentation.py [--out seg-output]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import proqha
from proqha.export.ort_session import ort_session
from proqha.metrics import MeanIoU

CLASSES = ("background", "square", "disc", "bar")
SIZE = 32


def conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class TinySegmenter(nn.Module):
    """Full-resolution features, a 1/2 and a 1/4 resolution encoder with a dilated conv, the deep features
    upsampled (bilinear) to the input's size and concatenated with the shallow ones, then per-pixel scores."""

    def __init__(self, classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.encoder = nn.Sequential(conv_bn(16, 32, stride=2), conv_bn(32, 32, stride=2), conv_bn(32, 32, dilation=2))
        self.fuse = conv_bn(48, 24)
        self.head = nn.Conv2d(24, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shallow = self.stem(x)
        deep = F.interpolate(self.encoder(shallow), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.fuse(torch.cat([shallow, deep], dim=1)))


def scenes(n: int, seed: int) -> TensorDataset:
    """``n`` images of 2-4 shapes on textured noise, and their per-pixel class masks (later shapes on top)."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    colours = torch.tensor([[1.5, -1.0, 0.5], [-1.0, 1.5, 0.0], [0.5, 0.5, -1.5]])
    images = 0.8 * torch.randn(n, 3, SIZE, SIZE, generator=gen)
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    for i in range(n):
        for _ in range(int(torch.randint(2, 5, (1,), generator=gen))):
            kind = int(torch.randint(1, len(CLASSES), (1,), generator=gen))
            cy, cx = (int(v) for v in torch.randint(4, SIZE - 4, (2,), generator=gen))
            r = int(torch.randint(3, 7, (1,), generator=gen))
            if kind == 1:
                inside = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
            elif kind == 2:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                inside = ((yy - cy).abs() <= 1) & ((xx - cx).abs() <= 2 * r)
            masks[i][inside] = kind
            images[i][:, inside] += colours[kind - 1][:, None]
    return TensorDataset(images, masks)


def train_float(model: nn.Module, loader: DataLoader, epochs: int) -> None:
    """The user's own float training (plain PyTorch): what a trained float checkpoint would hold."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()


def miou_of(outputs: list[np.ndarray], loader: DataLoader) -> float:
    metric = MeanIoU()
    for out, (_, y) in zip(outputs, loader):
        metric.update(torch.from_numpy(out), y)
    return metric.value()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("seg-output"), help="Folder for model.onnx and its report.")
    args = parser.parse_args()
    torch.manual_seed(0)
    train, calib, test = scenes(768, seed=1), scenes(128, seed=2), scenes(128, seed=3)
    train_loader = DataLoader(train, batch_size=32, shuffle=True)
    calib_loader, test_loader = DataLoader(calib, batch_size=64), DataLoader(test, batch_size=64)

    float_net = TinySegmenter()
    train_float(float_net, train_loader, epochs=3)
    float_miou = proqha.evaluate(float_net, test_loader, metric="miou")["test_metric"]
    print(f"float: mean IoU {float_miou:.1f}%")

    # quantize the trained float net (8 bit), then quantization-aware fine-tuning judged by mean IoU
    qmodel = proqha.quantize(float_net, next(iter(train_loader))[0], bits=8)
    for row in proqha.fit(qmodel, train_loader, test_loader, epochs=2, lr=1e-3, metric="miou"):
        print(f"QAT epoch {row['epoch']}: pixel accuracy {row['test_top1']:.1f}%, mean IoU {row['test_metric']:.1f}%")

    # two search steps: weights lowered where the calibration loss allows, the race ranked by mean IoU
    result = proqha.search_bits(qmodel, train_loader, calib_loader, test_loader, steps=2, candidates=4,
                                finetune_epochs=1, final_epochs=1, metric="miou")
    for step in result.steps:
        print(f"search step {step['step']}: paper cost {step['cost']:.4f}, mean IoU {step['test_metric']:.1f}%")

    # export with parity per pixel on the test scenes, then the file's own mean IoU in onnxruntime
    path = args.out / "model.onnx"
    report = proqha.export_onnx(qmodel, path, (3, SIZE, SIZE), test_loader)
    for p in report.parity:
        steps = "" if p.max_steps is None else f", largest difference {p.max_steps:.1f} output steps"
        print(f"parity {p.runtime}: per-pixel agreement {p.agreement:.2f}% (ties {p.agreement_ties:.2f}%){steps}")
    session = ort_session(path.read_bytes())
    runtime_miou = miou_of([session.run(None, {"input": x.numpy()})[0] for x, _ in test_loader], test_loader)
    torch_miou = proqha.evaluate(qmodel, test_loader, metric="miou")["test_metric"]
    print(f"mean IoU: PyTorch {torch_miou:.2f}%, onnxruntime (the file) {runtime_miou:.2f}%; "
          f"{report.kernels.integer_layers} convs in int8 kernels; wrote {path}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
