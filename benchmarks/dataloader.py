"""Images/second of the input pipeline alone against the training step alone, on the same data.

    python benchmarks/dataloader.py [--workers 0 2] [--images 512]

Writes a small ImageFolder of 32x32 PNGs (CIFAR-shaped) to a temporary folder, reads it with the CIFAR
training transforms (RandomCrop with padding, flip, ToTensor, Normalize) through proqha's loader, and
times the 8-bit QAT step of resnet20_post on batches of the same shape. Tells whether the loader or the
model bounds training on this machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from proqha.data.vision import _CIFAR10_STATS, _cifar_transform
from proqha.models import create_model
from proqha.quant import quantize_model
from proqha.train import make_loader, make_optimizer


def write_folder(root: Path, images: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp), args.images)
        data = torchvision.datasets.ImageFolder(tmp, transform=_cifar_transform("train", _CIFAR10_STATS))
        for workers in args.workers:
            loader = make_loader(data, args.batch, shuffle=True, workers=workers)
            next(iter(loader))  # start the workers
            t0 = time.perf_counter()
            seen = sum(len(y) for _, y in loader)
            print(f"input pipeline, {workers} workers: {seen / (time.perf_counter() - t0):8.0f} images/s")
    model = quantize_model(create_model("resnet20_post")).train()
    opt = make_optimizer(model, "sgd", 0.01, 0.0)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    times = []
    for i in range(6):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    print(f"8-bit QAT step alone (resnet20_post, batch {args.batch}): {args.batch / np.median(times):8.0f} images/s")


if __name__ == "__main__":
    main()
