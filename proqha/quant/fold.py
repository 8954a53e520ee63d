"""A quantized conv/linear as integer kernels run it: BatchNorm folded, int8 weights, int32 bias.

This is the one place the deployed arithmetic is defined. The exporter writes exactly these tensors,
and quantized layers in eval mode compute with them, so an evaluated model and its exported graph
agree up to float summation order.

``bn(conv(x, w) + b) = conv(x, w * f) + (b - mean) * f + beta`` with ``f = gamma / sqrt(var + eps)``:
with a per-channel weight grid ``w * f = ints * (scale * f)``, so the trained integers stay (a
negative ``f`` moves its sign into them, as scales are positive). Integers are then stored times
``k = weight_int_factor(qmax, act_max)`` at ``scale / k`` (k keeps every uint8 x int8 pair sum inside
int16), and the bias is rounded to the accumulator step ``input scale * weight scale``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from proqha.quant.grid import uint8_activation_max, weight_int_factor


def bn_factor(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel multiplier ``f`` and shift ``beta - mean * f`` of an eval-mode BatchNorm."""
    inv = torch.rsqrt(bn.running_var + bn.eps)
    f = bn.weight * inv if bn.affine else inv
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    return f, beta - bn.running_mean * f


@dataclass
class IntegerLayer:
    """Deployed tensors of one layer: ``weight = ints * scale`` (per output channel) and
    ``bias = bias_ints * bias_scale`` (None without a bias)."""

    ints: torch.Tensor
    scale: torch.Tensor
    int_factor: int
    bias_ints: torch.Tensor | None
    bias_scale: torch.Tensor
    input_scale: torch.Tensor

    def weight(self) -> torch.Tensor:
        return self.ints.to(self.scale.dtype) * self.scale.reshape(-1, *([1] * (self.ints.dim() - 1)))

    def bias(self) -> torch.Tensor | None:
        return None if self.bias_ints is None else self.bias_ints.to(self.bias_scale.dtype) * self.bias_scale


def integer_layer(layer: nn.Module, bn: nn.BatchNorm2d | None = None, input_scale: float | None = None
                  ) -> IntegerLayer:
    """The deployed tensors of a QuantConv2d/QuantLinear whose quantizers are both on and initialised.

    ``input_scale`` overrides the input quantizer's step (an export profile that re-grids the input).
    """
    wq, aq = layer.weight_quantizer, layer.input_quantizer
    grid = wq.grid()
    ints = wq.integers(layer.weight).to(torch.int64)
    scale = grid.scale.detach().reshape(-1).expand(layer.weight.shape[0]).clone()
    bias = layer.bias.detach() if layer.bias is not None else None
    if bn is not None:
        f, shift = bn_factor(bn)
        f, shift = f.detach(), shift.detach()
        ints = ints * torch.where(f < 0, -1, 1).reshape(-1, *([1] * (ints.dim() - 1)))
        scale = scale * f.abs()
        bias = (bias if bias is not None else torch.zeros_like(f)) * f + shift
    k = weight_int_factor(grid.qmax, uint8_activation_max(aq.grid()))
    ints, scale = ints * k, scale / k
    x_scale = aq.scale().detach().reshape(()) if input_scale is None else torch.tensor(float(input_scale))
    bias_scale = x_scale * scale
    bias_ints = None
    if bias is not None:
        bias_ints = torch.clamp(torch.round(bias / bias_scale), -(2**31), 2**31 - 1).to(torch.int64)
    return IntegerLayer(ints, scale, k, bias_ints, bias_scale, x_scale)


def float_layer(layer: nn.Module, bn: nn.BatchNorm2d | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of a layer whose quantizers are off (or of the float export), BatchNorm folded."""
    weight = layer.quantized_weight().detach()
    bias = layer.bias.detach() if layer.bias is not None else None
    if bn is None:
        return weight, bias
    f, shift = bn_factor(bn)
    f, shift = f.detach(), shift.detach()
    bias = (bias if bias is not None else torch.zeros_like(f)) * f + shift
    return weight * f.reshape(-1, *([1] * (weight.dim() - 1))), bias
