"""torchvision architectures with random initialisation (nothing is ever downloaded)."""

from __future__ import annotations

from typing import Any

from torch import nn

from proqha.models.registry import register_model


def _tv_models() -> Any:
    import torchvision.models  # seconds to import (it loads torch._dynamo): only when such a model is built

    return torchvision.models


def _first_conv_channels(model: nn.Module, path: str, in_channels: int) -> nn.Module:
    """Replace the stem conv when the input is not RGB."""
    if in_channels == 3:
        return model
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old: nn.Conv2d = getattr(parent, leaf)
    setattr(parent, leaf, nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                                    bias=old.bias is not None))
    return model


@register_model(input_size=(3, 224, 224), num_classes=1000)
def resnet18(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """torchvision ResNet-18 (the paper's ImageNet model), random init."""
    return _first_conv_channels(_tv_models().resnet18(weights=None, num_classes=num_classes), "conv1",
                                in_channels)


@register_model(input_size=(3, 224, 224), num_classes=1000)
def resnet50(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """torchvision ResNet-50, random init."""
    return _first_conv_channels(_tv_models().resnet50(weights=None, num_classes=num_classes), "conv1",
                                in_channels)


@register_model(input_size=(3, 224, 224), num_classes=1000)
def mobilenet_v2(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """torchvision MobileNetV2 (depthwise convs, linear bottlenecks), random init."""
    return _first_conv_channels(_tv_models().mobilenet_v2(weights=None, num_classes=num_classes),
                                "features.0.0", in_channels)
