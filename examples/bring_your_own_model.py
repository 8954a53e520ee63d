"""Bring your own model and data: proqha's Python API end to end, offline, in about half a minute on a CPU.

A small CNN and a synthetic 6-class image set (each class a fixed pattern, plus noise and a
random shift) are defined here; then:

    quantize -> fit (quantization-aware) -> search_bits (2 steps) -> export_onnx (with parity) -> bench

    python examples/bring_your_own_model.py [--out byo-output]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import proqha

NUM_CLASSES, INPUT_SIZE = 6, (3, 16, 16)


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class SmallNet(nn.Module):
    """A stem, a residual block with a squeeze-excitation gate, two strided conv-BN-ReLU layers, then a
    linear head: 16x16 in, 4x4x32 features. Residual adds and gates are what most user CNNs have."""

    def __init__(self, num_classes: int = NUM_CLASSES, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv_bn(in_channels, 16), conv_bn(16, 16)
        self.conv3 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 16, 1), nn.Sigmoid())
        self.down1, self.down2 = conv_bn(16, 32, stride=2), conv_bn(32, 32, stride=2)
        self.head = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        y = self.conv3(self.conv2(x))
        x = torch.relu(x + y * self.gate(y))  # residual block with a squeeze-excitation gate
        x = self.down2(self.down1(x))
        return self.head(torch.flatten(x, 1))


def synthetic_images(n: int, seed: int, noise: float = 2.5) -> TensorDataset:
    """Class c: its fixed random 8x8 pattern upsampled to 16x16, shifted by up to 2 pixels, plus noise."""
    templates = torch.randn(NUM_CLASSES, 3, 8, 8, generator=torch.Generator().manual_seed(1234))
    templates = nn.functional.interpolate(templates, size=INPUT_SIZE[1:], mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(NUM_CLASSES, (n,), generator=gen)
    shifts = torch.randint(-2, 3, (n, 2), generator=gen)
    images = torch.stack([torch.roll(templates[c], (int(dy), int(dx)), dims=(1, 2))
                          for c, (dy, dx) in zip(labels.tolist(), shifts)])
    images = images + noise * torch.randn(images.shape, generator=gen)
    return TensorDataset(images, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("byo-output"), help="Folder for model.onnx and its report.")
    args = parser.parse_args()
    torch.manual_seed(0)

    train_full, test = synthetic_images(2400, seed=1), synthetic_images(600, seed=2)
    train, calib = Subset(train_full, range(2000)), Subset(train_full, range(2000, 2400))  # calib: held out
    train_loader = DataLoader(train, batch_size=64, shuffle=True)
    calib_loader = DataLoader(calib, batch_size=256)
    test_loader = DataLoader(test, batch_size=256)

    # 1. quantize: the quantized twin of the float net (8 bit), ranges calibrated on one batch
    qmodel = proqha.quantize(SmallNet(), next(iter(train_loader))[0], bits=8)

    # 2. quantization-aware training (here from scratch; a pretrained float net works the same way)
    for row in proqha.fit(qmodel, train_loader, test_loader, epochs=4, optimizer="adam", lr=3e-3):
        print(f"epoch {row['epoch']}  loss {row['train_loss']:.3f}  test top-1 {row['test_top1']:.1f}%")

    # 3. progressive search: lower per-layer bits two steps, fine-tuning one epoch after each
    result = proqha.search_bits(qmodel, train_loader, calib_loader, test_loader, steps=2, candidates=6,
                                finetune_epochs=1, final_epochs=1, lam=0.5)
    for step in result.steps:
        print(f"step {step['step']}  paper cost {step['cost']:.4f}  BitOPs ratio {step['bitops_ratio']:.4f}"
              f"  test top-1 {step['test_top1']:.1f}%")
    lowered = {name: b for name, b in result.steps[-1]["bits"].items() if b != {"w": 8, "a": 8}}
    print(f"stopped: {result.stopped}; layers below 8 bit: {lowered}")

    # 4. export: QDQ ONNX, validated (checker, int8 kernels, parity with PyTorch on 256 test images)
    parity_data = DataLoader(Subset(test, range(256)), batch_size=128)
    onnx_path = args.out / "model.onnx"
    report = proqha.export_onnx(qmodel, onnx_path, INPUT_SIZE, parity_data)
    for p in report.parity:
        print(f"parity {p.runtime}: top-1 agreement {p.agreement:.2f}% (ties {p.agreement_ties:.2f}%), "
              f"PyTorch top-1 {p.torch_top1:.1f}%, runtime top-1 {p.runtime_top1:.1f}%")
    print(f"int8 kernels: {report.kernels.integer_layers} conv/linear, {report.kernels.float_layers} float; "
          f"wrote {onnx_path}")

    # 5. bench: onnxruntime latency of the searched model and its fp32 twin
    for row in proqha.bench(qmodel, INPUT_SIZE, batches=(1, 8), iters=30, test_data=test_loader):
        speed = f"{row['speedup_vs_fp32']:.2f}x fp32" if row["speedup_vs_fp32"] else "-"
        print(f"bench {row['model']:>5} {row['engine']} batch {row['batch']}: median {row['median_ms']:.3f} ms"
              f" ({speed}), top-1 {row['engine_top1']:.1f}%")


if __name__ == "__main__":
    main()
