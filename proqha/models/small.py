"""Small models for the embedded data (8x8 digits): trains to >95% in seconds on a CPU."""

from __future__ import annotations

from torch import nn

from proqha.models.cifar_resnet import CifarResNet, PostActBlock
from proqha.models.registry import register_model


@register_model(input_size=(1, 8, 8), num_classes=10)
def digits_resnet(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A post-activation ResNet with one block per stage (16/32/64 channels) for 8x8 inputs."""
    return CifarResNet(PostActBlock, 1, num_classes=num_classes, in_channels=in_channels)
