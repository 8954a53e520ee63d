"""Helpers the tests share: small calibrated models and bit configurations (no downloads)."""

from __future__ import annotations

import itertools

import torch
from torch.utils.data import DataLoader, TensorDataset

from proqha.models import create_model
from proqha.quant import BitConfig, DoReFaWeightQuantizer, QuantConfig, quant_layers, quantize_model, searchable_layers


def calibrate_bn(model: torch.nn.Module, x: torch.Tensor, passes: int = 2) -> torch.nn.Module:
    """Give BatchNorm realistic running statistics so an eval-mode random model has sane outputs."""
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(x)
    return model.eval()


def configure_bits(model, config: str) -> None:
    """uniform N, or "mixed": every searchable knob cycles through 2..8 (2..7 for DoReFa)."""
    bits = BitConfig.from_model(model).to_dict()
    dorefa = any(isinstance(m.weight_quantizer, DoReFaWeightQuantizer) for m in quant_layers(model).values())
    cycle = itertools.cycle(range(2, 8 if dorefa else 9))
    for name in searchable_layers(model):
        if config == "mixed":
            bits[name] = {"w": next(cycle), "a": next(cycle)}
        else:
            bits[name] = {"w": int(config), "a": int(config)}
    BitConfig(bits).apply(model)


def random_cifar(weights: str, int8_kernels: str = "portable") -> tuple[torch.nn.Module, DataLoader]:
    torch.manual_seed(0)
    x = torch.randn(96, 3, 32, 32)
    float_model = create_model("resnet20_post")
    with torch.no_grad():  # spread the random logits over many output steps, so top-1 is rarely a tie
        float_model.fc.weight.mul_(20)
    model = quantize_model(float_model, QuantConfig(weight_quantizer=weights, int8_kernels=int8_kernels))
    calibrate_bn(model, x[:32])  # BN statistics and quantizer ranges from data, then eval
    return model, DataLoader(TensorDataset(x[32:], torch.randint(0, 10, (64,))), batch_size=32)


def calibrated_resnet20(bits: int = 4) -> torch.nn.Module:
    """A quantized CIFAR-shape ResNet-20 with random weights, BN statistics and ranges set on 8 images, in eval."""
    torch.manual_seed(0)
    model = quantize_model(create_model("resnet20_post"), QuantConfig(bits=bits))
    return calibrate_bn(model, torch.randn(8, 3, 32, 32), passes=1)
