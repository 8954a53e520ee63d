"""A user's own trained float model, made offline in plain PyTorch: the starting point of the README's
"Your own trained model" walk-through.

It draws an image folder (four classes of shapes in random colours, sizes and places on noise:
``<out>/images/train/<class>/*.png`` and ``<out>/images/val/<class>/*.png``, some of them grayscale),
trains a torchvision ResNet-18 with four outputs on it for a few epochs, and saves its state dict the way
training scripts do (``torch.save(model.state_dict(), "<out>/model.pth")``). Nothing of proqha is used.

    python examples/own_float_model.py --out own
    proqha quantize --init own/model.pth --arch resnet18 --dataset imagefolder --data-dir own/images \\
        --image-size 32 --bits 8
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

import torch
import torchvision
from PIL import Image, ImageDraw
from torch import nn

CLASSES = ("circle", "cross", "square", "triangle")  # sorted, as folder names are read
HUES = ((220, 40, 40), (40, 200, 40), (40, 60, 220), (230, 210, 30))
DRAWN_SIZE = 40  # pixels of a drawn image; models see the center 32 after resizing to 37
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # what proqha's imagefolder normalizes with


def draw(shape: str, rng: random.Random) -> Image.Image:
    """One image of ``shape`` in a colour of its class's family, at a random size and place on a noisy background."""
    noise = bytes(rng.randrange(80, 130) for _ in range(DRAWN_SIZE * DRAWN_SIZE * 3))
    image = Image.frombytes("RGB", (DRAWN_SIZE, DRAWN_SIZE), noise)
    pen = ImageDraw.Draw(image)
    hue = HUES[CLASSES.index(shape)]  # each class has its colour family, and its shape
    colour = tuple(min(255, max(0, c + rng.randrange(-40, 41))) for c in hue)
    r = rng.uniform(9, 13)
    cx, cy = rng.uniform(r + 4, DRAWN_SIZE - r - 4), rng.uniform(r + 4, DRAWN_SIZE - r - 4)
    if shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        pen.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "triangle":
        turn = rng.uniform(0, 2 * math.pi)
        pen.polygon([(cx + r * math.cos(turn + k * 2 * math.pi / 3), cy + r * math.sin(turn + k * 2 * math.pi / 3))
                     for k in range(3)], fill=colour)
    else:
        w = r / 3
        pen.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        pen.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    return image.convert("L") if rng.random() < 0.1 else image  # some grayscale files, as real folders have


def draw_folder(root: Path, train_per_class: int = 60, val_per_class: int = 25, seed: int = 0) -> None:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png``."""
    rng = random.Random(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for shape in CLASSES:
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw(shape, rng).save(folder / f"{shape}-{i:04d}.png")


def train_float(root: Path, epochs: int = 4, image_size: int = 32, seed: int = 0) -> tuple[nn.Module, float]:
    """A torchvision ResNet-18 with one output per class, trained on ``root/train`` with Adam; its val top-1."""
    T = torchvision.transforms
    resize = round(image_size / 0.875)
    tf = T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(), T.Normalize(*IMAGENET_STATS)])
    train_tf = T.Compose([T.Resize(resize), T.RandomCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(*IMAGENET_STATS)])
    rgb = lambda path: Image.open(path).convert("RGB")  # noqa: E731
    train = torchvision.datasets.ImageFolder(str(root / "train"), transform=train_tf, loader=rgb)
    val = torchvision.datasets.ImageFolder(str(root / "val"), transform=tf, loader=rgb)
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=len(train.classes))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = torch.utils.data.DataLoader(train, batch_size=16, shuffle=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * len(loader))
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        right = sum(int((model(x).argmax(1) == y).sum()) for x, y in torch.utils.data.DataLoader(val, batch_size=100))
    return model, 100.0 * right / len(val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("own"), help="Folder for images/ and model.pth.")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    draw_folder(args.out / "images")
    model, top1 = train_float(args.out / "images", args.epochs)
    torch.save(model.state_dict(), args.out / "model.pth")
    print(f"float ResNet-18: val top-1 {top1:.2f}% on {len(CLASSES)} classes; state dict {args.out / 'model.pth'}")


if __name__ == "__main__":
    main()
