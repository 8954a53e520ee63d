"""Networks and data of the kind users bring, none designed for proqha: a small depthwise-residual net, a
plain VGG-style net, stock torchvision models; two synthetic image tasks generated on the fly (no files,
no downloads). ``benchmarks/qat_accuracy.py`` and the tests train on them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DepthwiseBlock(nn.Module):
    """Depthwise 3x3, pointwise 1x1, a residual add, then ReLU (written as a user would, in forward)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = _cbr(c, c, 3, groups=c)
        self.pw = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.pw(self.dw(x)))


class DepthwiseNet(nn.Module):
    """Stem, two stride-2 stages each with a depthwise residual block, global pooling, a linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, 16)
        self.down1, self.block1 = _cbr(16, 32, stride=2), DepthwiseBlock(32)
        self.down2, self.block2 = _cbr(32, 64, stride=2), DepthwiseBlock(64)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.down2(self.block1(self.down1(self.stem(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class PlainNet(nn.Module):
    """Conv-BN-ReLU and max pooling down to 1/16 of the image, then one linear layer on the flattened features."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, size: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(in_channels, 16), nn.MaxPool2d(2), _cbr(16, 32), nn.MaxPool2d(2),
                                      _cbr(32, 64), _cbr(64, 64), nn.MaxPool2d(2), _cbr(64, 64), nn.MaxPool2d(2))
        self.classifier = nn.Linear(64 * (size // 16) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def mobilenet_v3_small(num_classes: int, in_channels: int = 3) -> nn.Module:
    """Stock torchvision MobileNetV3-Small (in-place Hardswish, squeeze-excitation), stride-1 stem for
    small images, BatchNorm momentum 0.1 for short runs (torchvision's 0.01 suits 600 ImageNet epochs)."""
    from torchvision.models import mobilenet_v3_small as build

    model = build(num_classes=num_classes)
    model.features[0][0].stride = (1, 1)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = 0.1
    return model


def resnet18(num_classes: int, in_channels: int = 3) -> nn.Module:
    """Stock torchvision ResNet-18 (in-place ReLUs, its own stride-2 stem and max pooling)."""
    from torchvision.models import resnet18 as build

    return build(num_classes=num_classes)


NETS = {  # name -> (number of classes, image size) -> model
    "depthwise": lambda classes, size: DepthwiseNet(classes),
    "plain": lambda classes, size: PlainNet(classes, size=size),
    "mobilenet_v3_small": lambda classes, size: mobilenet_v3_small(classes),
    "resnet18": lambda classes, size: resnet18(classes),
}


def prototypes(n: int, seed: int, num_classes: int = 10, size: int = 32) -> TensorDataset:
    """Smooth random class patterns, randomly shifted (up to 6 pixels) under strong noise (std 3)."""
    g = torch.Generator().manual_seed(4321)
    protos = F.avg_pool2d(torch.randn(num_classes, 3, size, size, generator=g), 5, 1, 2)
    protos = protos / protos.flatten(1).std(1).view(-1, 1, 1, 1)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    shifts = torch.randint(-6, 7, (n, 2), generator=g)
    x = torch.stack([torch.roll(protos[c], (int(s[0]), int(s[1])), (1, 2)) for c, s in zip(y, shifts)])
    return TensorDataset(x + 3.0 * torch.randn(x.shape, generator=g), y)


SHAPES = ("disk", "square", "cross", "hstripes", "vstripes", "checker")


def shapes(n: int, seed: int, size: int = 64) -> TensorDataset:
    """Six classes of coloured shapes and textures at random places and sizes on a noisy background."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, len(SHAPES), (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    images = []
    for c in y.tolist():
        r = 7 + 7 * float(torch.rand((), generator=g))
        cy, cx = (r + 1 + (size - 2 * r - 2) * torch.rand(2, generator=g)).tolist()
        dy, dx = yy - cy, xx - cx
        box = (dy.abs() <= r) & (dx.abs() <= r)
        period = 5 + 4 * float(torch.rand((), generator=g))
        phase = period * float(torch.rand((), generator=g))
        stripes_y, stripes_x = ((yy + phase) % period) < period / 2, ((xx + phase) % period) < period / 2
        mask = [dy ** 2 + dx ** 2 <= r * r, (dy.abs() <= 0.85 * r) & (dx.abs() <= 0.85 * r),
                box & ((dy.abs() <= r / 3) | (dx.abs() <= r / 3)), box & stripes_y, box & stripes_x,
                box & (stripes_y ^ stripes_x)][c]
        fg, bg = 0.4 + 0.6 * torch.rand(3, 1, 1, generator=g), 0.35 * torch.rand(3, 1, 1, generator=g)
        img = torch.where(mask, fg, bg) + 0.3 * torch.randn(3, size, size, generator=g)
        images.append((img - 0.4) / 0.3)
    return TensorDataset(torch.stack(images), y)


DATASETS = {"prototypes": (prototypes, 10, 32), "shapes": (shapes, len(SHAPES), 64)}


def splits(name: str, train: int, test: int) -> tuple[TensorDataset, TensorDataset, int]:
    """(train set, test set, number of classes) of a synthetic task; train and test from other seeds."""
    make, classes, _ = DATASETS[name]
    return make(train, 1), make(test, 2), classes


def image_size(name: str) -> int:
    return DATASETS[name][2]
