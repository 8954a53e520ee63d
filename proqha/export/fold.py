"""Folding an inference-mode BatchNorm into the conv before it.

``bn(conv(x, w) + b) = conv(x, w * f) + (b - mean) * f + beta`` with ``f = gamma / sqrt(var + eps)`` per
output channel. With a per-channel weight grid, ``w * f = ints * (scale * f)``: the integers stay, only
the channel scale changes (its sign moves into the integers when ``f < 0``, since scales are positive).
"""

from __future__ import annotations

import torch
from torch import nn


def bn_factor(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel multiplier ``f`` and shift ``beta - mean * f`` of an eval-mode BatchNorm."""
    f = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
    beta = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    return f, beta - bn.running_mean * f


def fold_into_grid(ints: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(integers, positive per-channel scale, bias) after folding ``bn``; |integers| are unchanged."""
    f, shift = bn_factor(bn)
    sign = torch.where(f < 0, -1, 1).to(ints.dtype)
    ints = ints * sign.reshape(-1, *([1] * (ints.dim() - 1)))
    new_bias = (bias if bias is not None else torch.zeros_like(f)) * f + shift
    return ints, scale * f.abs(), new_bias


def fold_into_float(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of a float conv after folding ``bn``."""
    f, shift = bn_factor(bn)
    new_bias = (bias if bias is not None else torch.zeros_like(f)) * f + shift
    return weight * f.reshape(-1, *([1] * (weight.dim() - 1))), new_bias
