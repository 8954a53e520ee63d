"""The paper's CIFAR ResNets (He et al. 2016, 3 stages of 16/32/64 channels, 6n+2 layers).

``resnet20/32/56`` use pre-activation blocks (BN-ReLU-conv) as in the reference code; they keep
float BatchNorm "islands" before each conv that a deployed graph cannot fold. ``resnet20_post`` etc.
are the post-activation variant (conv-BN-ReLU, 1x1 projection shortcuts) whose every BN folds into
the conv before it, so the whole network deploys in integer kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from proqha.models.registry import register_model


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the identity (or a projection of the activated input)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        identity = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + identity


class PostActBlock(nn.Module):
    """conv3x3-BN-ReLU, conv3x3-BN, add the identity (or 1x1 conv-BN projection), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.downsample(x) if self.downsample is not None else x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class CifarResNet(nn.Module):
    """Stem conv, three stages of ``depth`` blocks (strides 1, 2, 2), global average pool, linear."""

    def __init__(self, block: type[nn.Module], depth: int, num_classes: int = 10, in_channels: int = 3,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.preact = block is PreActBlock
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn_final = nn.BatchNorm2d(cin) if self.preact else None
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        x = x if self.preact else F.relu(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.bn_final is not None:
            x = F.relu(self.bn_final(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def _cifar(block: type[nn.Module], layers: int, **kw: int) -> CifarResNet:
    return CifarResNet(block, (layers - 2) // 6, **kw)


@register_model(input_size=(3, 32, 32), num_classes=10)
def resnet20(**kw: int) -> nn.Module:
    """CIFAR ResNet-20, pre-activation blocks (as the reference)."""
    return _cifar(PreActBlock, 20, **kw)


@register_model(input_size=(3, 32, 32), num_classes=10)
def resnet32(**kw: int) -> nn.Module:
    """CIFAR ResNet-32, pre-activation blocks (as the reference)."""
    return _cifar(PreActBlock, 32, **kw)


@register_model(input_size=(3, 32, 32), num_classes=10)
def resnet56(**kw: int) -> nn.Module:
    """CIFAR ResNet-56, pre-activation blocks (as the reference)."""
    return _cifar(PreActBlock, 56, **kw)


@register_model(input_size=(3, 32, 32), num_classes=10)
def resnet20_post(**kw: int) -> nn.Module:
    """CIFAR ResNet-20, post-activation blocks (every BN folds: deploys fully in integer kernels)."""
    return _cifar(PostActBlock, 20, **kw)


@register_model(input_size=(3, 32, 32), num_classes=10)
def resnet32_post(**kw: int) -> nn.Module:
    """CIFAR ResNet-32, post-activation blocks."""
    return _cifar(PostActBlock, 32, **kw)


@register_model(input_size=(3, 32, 32), num_classes=10)
def resnet56_post(**kw: int) -> nn.Module:
    """CIFAR ResNet-56, post-activation blocks."""
    return _cifar(PostActBlock, 56, **kw)
