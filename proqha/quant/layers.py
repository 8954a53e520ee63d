"""Quantized layers. They subclass the float layer and only add quantizer children
(``input_quantizer``, ``weight_quantizer``), so a float state dict's keys stay valid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from proqha.quant.grid import round_ste, weight_int_factor
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

    def accumulator_step(self) -> torch.Tensor | None:
        """Per-output-channel step of a deployed int32 accumulator (and bias): input scale * weight scale
        / k (see ``weight_int_factor``); None when either quantizer is off."""
        a, w = self.input_quantizer, self.weight_quantizer
        if not (a.enabled and w.enabled and a.initialized and w.initialized):
            return None
        step = a.scale() * w.scale() / weight_int_factor(w.qrange()[1])
        return step.expand(self.weight.shape[0])

    def quantized_bias(self) -> torch.Tensor | None:
        """The bias on the accumulator grid (straight-through), as an int32 deployed bias holds it."""
        step = self.accumulator_step()
        if self.bias is None or step is None:
            return self.bias
        return round_ste(self.bias / step) * step


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
        x = self.input_quantizer(x)
        return self._conv_forward(x, self.quantized_weight(), self.quantized_bias())


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
        x = self.input_quantizer(x)
        return F.linear(x, self.quantized_weight(), self.quantized_bias())


class FoldedBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm that a deployed graph folds into the quantized conv before it.

    Training is plain BatchNorm. In eval mode its shift is rounded to the conv's accumulator grid
    (times |gamma / sigma|), exactly as the folded int32 bias of the deployed conv is; so the eval model
    computes what the exported graph computes.
    """

    conv: "QuantConv2d | None" = None

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d) -> "FoldedBatchNorm2d":
        folded = cls.__new__(cls)
        folded.__dict__.update(bn.__dict__)  # the same parameters, buffers and hooks
        return folded

    def attach(self, conv: "QuantConv2d") -> None:
        object.__setattr__(self, "conv", conv)  # a reference, not a child module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = self.conv.accumulator_step() if self.conv is not None and not self.training else None
        if step is None or not self.track_running_stats:
            return super().forward(x)
        factor = self.weight / torch.sqrt(self.running_var + self.eps) if self.affine else \
            1.0 / torch.sqrt(self.running_var + self.eps)
        beta = self.bias if self.affine else torch.zeros_like(factor)
        shift = beta - self.running_mean * factor
        grid = step * factor.abs()
        shift = torch.round(shift / grid) * grid
        return x * factor.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


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
