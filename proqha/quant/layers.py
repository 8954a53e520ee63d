"""Quantized layers. They subclass the float layer and only add quantizer children
(``input_quantizer``, ``weight_quantizer``), so a float state dict's keys stay valid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from proqha.quant.quantizers import PACTQuantizer, Quantizer, SignedActQuantizer


def act_quantizer(bits: int, signed: bool) -> Quantizer:
    """An activation quantizer: PACT for non-negative tensors, symmetric signed otherwise."""
    return SignedActQuantizer(bits) if signed else PACTQuantizer(bits)


class QuantLayer:
    """Mixin of QuantConv2d/QuantLinear: the two searchable knobs and whether the search may touch them."""

    input_quantizer: Quantizer
    weight_quantizer: Quantizer
    searchable: bool = True

    @property
    def w_bits(self) -> int:
        return self.weight_quantizer.bits

    @property
    def a_bits(self) -> int:
        return self.input_quantizer.bits

    def set_bits(self, w: int | None = None, a: int | None = None) -> None:
        if w is not None:
            self.weight_quantizer.bits = w
        if a is not None:
            self.input_quantizer.bits = a

    def quantized_weight(self) -> torch.Tensor:
        """The weight as the forward pass uses it (fake-quantized)."""
        return self.weight_quantizer(self.weight)


def _adopt(dst: nn.Module, src: nn.Module) -> None:
    """Share the float layer's parameters (``dst`` was built on the meta device), any child modules it
    carries (an inserted ``output_quantizer``) and its training flag."""
    dst.weight = src.weight
    dst.bias = src.bias
    for name, child in src.named_children():
        setattr(dst, name, child)
    dst.train(src.training)


class QuantConv2d(QuantLayer, nn.Conv2d):
    """Conv2d (grouped and depthwise included) with input and weight quantizers."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, a_quant: Quantizer, w_quant: Quantizer) -> "QuantConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
        _adopt(q, conv)
        q.input_quantizer = a_quant
        q.weight_quantizer = w_quant
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(x), self.quantized_weight(), self.bias)


class QuantLinear(QuantLayer, nn.Linear):
    """Linear with input and weight quantizers."""

    @classmethod
    def from_float(cls, fc: nn.Linear, a_quant: Quantizer, w_quant: Quantizer) -> "QuantLinear":
        q = cls(fc.in_features, fc.out_features, fc.bias is not None, device="meta")
        _adopt(q, fc)
        q.input_quantizer = a_quant
        q.weight_quantizer = w_quant
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.quantized_weight(), self.bias)


class QuantAdd(nn.Module):
    """A residual add that stays in integer kernels when deployed: both inputs and the output are
    quantized (8 bit). ``relu`` folds a ReLU that directly follows the add, so the output grid is
    unsigned; an input already quantized upstream passes through (``nn.Identity``)."""

    def __init__(self, q_a: nn.Module, q_b: nn.Module, output_quantizer: Quantizer, relu: bool) -> None:
        super().__init__()
        self.input_quantizer_a = q_a
        self.input_quantizer_b = q_b
        self.output_quantizer = output_quantizer
        self.relu = relu

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        y = self.input_quantizer_a(a) + self.input_quantizer_b(b)
        if self.relu:
            y = F.relu(y)
        return self.output_quantizer(y)

    def extra_repr(self) -> str:
        return f"relu={self.relu}"
