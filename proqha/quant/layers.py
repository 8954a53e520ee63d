"""Quantized layers. They subclass the float layer and only add quantizer children
(``input_quantizer``, ``weight_quantizer``), so a float state dict's keys stay valid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from proqha.quant import kernels, native
from proqha.quant.fold import integer_layer
from proqha.quant.grid import fake_quant_add
from proqha.quant.quantizers import PACTQuantizer, Quantizer, SignedActQuantizer, WeightQuantizer


def act_quantizer(bits: int, signed: bool) -> Quantizer:
    """An activation quantizer: PACT for non-negative tensors, symmetric signed otherwise."""
    return SignedActQuantizer(bits) if signed else PACTQuantizer(bits)


class QuantLayer:
    """Mixin of QuantConv2d/QuantLinear: the two searchable knobs and whether the search may touch them."""

    input_quantizer: Quantizer
    weight_quantizer: Quantizer
    searchable: bool = True
    channel_axis: int = 1  # where the output channels are: 1 for conv, -1 for linear

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

    def train(self, mode: bool = True):  # type: ignore[override]
        """Turning to eval mode settles a max-range weight grid on the weights as they are now (the last
        optimizer step came after the last training forward)."""
        quantizer = self._modules.get("weight_quantizer")  # type: ignore[attr-defined]  # absent while built
        if not mode and isinstance(quantizer, WeightQuantizer):
            with torch.no_grad():
                quantizer.follow(self.weight)
        return super().train(mode)  # type: ignore[misc]

    def quantized_weight(self) -> torch.Tensor:
        """The weight as the forward pass uses it (fake-quantized)."""
        return self.weight_quantizer(self.weight)

    def deployed(self) -> bool:
        """Whether this forward computes with the deployed integer tensors (eval mode, both quantizers on)."""
        a, w = self.input_quantizer, self.weight_quantizer
        return not self.training and a.enabled and w.enabled and a.initialized and w.initialized

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input quantizer's output; also settles the weight range on a first call, so ``deployed()``
        gives the same answer to this layer and to the BatchNorm folded into it."""
        if self.weight_quantizer.enabled and not self.weight_quantizer.initialized:
            self.weight_quantizer.initialize(self.weight)
        return self.input_quantizer(x)

    def op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The float layer's computation (conv or linear) with the given weight and bias."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantize_input(x)
        if self.deployed():
            return self.integer_forward(x)
        return self.op(x, self.quantized_weight(), self.bias)

    def integer_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eval mode: compute as integer kernels do. ``x`` (already on the input grid) becomes integers,
        the accumulator ``op(x_int, w_int) + bias_int`` is formed in float32 (exact while it stays below
        2^24, which covers typical layers; beyond, float32 rounds at 6e-8 relative), and one multiply by
        ``input scale * weight scale`` gives the output, as onnxruntime's requantization does."""
        d = integer_layer(self, self.folded_bn)
        x_int = torch.round(x * (1.0 / d.input_scale))
        acc = self.op(x_int, d.ints.to(x.dtype), None)
        shape = [1] * acc.dim()
        shape[self.channel_axis] = -1  # conv: N C H W; linear: channels last on any number of dims
        if d.bias_ints is not None:
            acc = acc + d.bias_ints.to(x.dtype).reshape(shape)
        return acc * d.bias_scale.to(x.dtype).reshape(shape)

    folded_bn: "nn.BatchNorm2d | None" = None


def _adopt(dst: nn.Module, src: nn.Module, a_quant: Quantizer, w_quant: Quantizer) -> nn.Module:
    """Give ``dst`` (built on the meta device) the float layer's parameters, any child modules it carries
    (an inserted ``output_quantizer``), its training flag, and the two quantizers."""
    dst.weight = src.weight
    dst.bias = src.bias
    for name, child in src.named_children():
        setattr(dst, name, child)
    dst.train(src.training)
    dst.input_quantizer = a_quant
    dst.weight_quantizer = w_quant
    return dst


class QuantConv2d(QuantLayer, nn.Conv2d):
    """Conv2d (grouped and depthwise included) with input and weight quantizers."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, a_quant: Quantizer, w_quant: Quantizer) -> "QuantConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
        return _adopt(q, conv, a_quant, w_quant)

    def op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self._conv_forward(x, weight, bias)


class QuantLinear(QuantLayer, nn.Linear):
    """Linear with input and weight quantizers (on 2-D or N-d inputs, features last)."""

    channel_axis = -1

    @classmethod
    def from_float(cls, fc: nn.Linear, a_quant: Quantizer, w_quant: Quantizer) -> "QuantLinear":
        return _adopt(cls(fc.in_features, fc.out_features, fc.bias is not None, device="meta"), fc, a_quant, w_quant)

    def op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)


class FoldedBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm that a deployed graph folds into the quantized conv before it.

    Training: plain BatchNorm. Eval: when the conv computes with its deployed tensors (which include
    this BatchNorm), it passes its input through; otherwise it is a plain eval BatchNorm.
    """

    conv: "QuantConv2d | None" = None

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d) -> "FoldedBatchNorm2d":
        folded = cls.__new__(cls)
        folded.__dict__.update(bn.__dict__)  # the same parameters, buffers and hooks
        return folded

    def attach(self, conv: "QuantConv2d") -> None:
        """Pair with ``conv`` (references, not child modules)."""
        object.__setattr__(self, "conv", conv)
        object.__setattr__(conv, "folded_bn", self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None and self.conv.deployed():
            return x
        return super().forward(x)


def _plain_lsq_ready(q: nn.Module) -> bool:
    """Whether ``q`` is a per-tensor LSQ activation quantizer (unmodified forward, no hooks, a learned
    range), on and initialised."""
    return (isinstance(q, Quantizer) and q.enabled and q.initialized and q.axis is None and not q.tracks_range
            and type(q)._fake_quant is Quantizer._fake_quant
            and type(q).forward in (Quantizer.forward, PACTQuantizer.forward)
            and not (q._forward_hooks or q._forward_pre_hooks))  # the fused path does not call the module


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
        fused = self._fused_args(a, b)
        if fused is not None:
            return fake_quant_add(a, b, *fused)
        y = self.input_quantizer_a(a) + self.input_quantizer_b(b)
        q = self.output_quantizer
        if self.relu and not (q.enabled and q.initialized and not q.signed):  # an unsigned grid's clamp at 0: the ReLU
            y = F.relu(y)
        return q(y)

    def _fused_args(self, a: torch.Tensor, b: torch.Tensor) -> tuple | None:
        """The arguments of ``fake_quant_add`` when the fused CPU kernel computes what the quantizers and
        the add compute in turn (float32 CPU inputs of one shape, not traced; plain LSQ quantizers, on and
        initialised; a ReLU left to an unsigned output grid), else None."""
        if kernels.traced(a) or not native.usable(a, b) or b.shape != a.shape:
            return None
        out = self.output_quantizer
        if not _plain_lsq_ready(out) or (self.relu and out.signed):
            return None
        inputs = []
        for q, x in ((self.input_quantizer_a, a), (self.input_quantizer_b, b)):
            if not (isinstance(q, nn.Identity) or _plain_lsq_ready(q)):
                return None
            inputs.append(None if isinstance(q, nn.Identity) else q.per_tensor_args(x))
        args = (*inputs, out.per_tensor_args(a))
        return args if native.usable(*(arg[0] for arg in args if arg is not None)) else None  # float32 alphas

    def extra_repr(self) -> str:
        return f"relu={self.relu}"
