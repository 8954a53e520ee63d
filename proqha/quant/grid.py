"""Integer grids, and the fake-quantization autograd functions (their kernels: ``proqha.quant.kernels``).

A grid is what an exporter needs to reproduce a quantizer exactly:
``x_q = clamp(round(x / scale), qmin, qmax) * scale`` with zero point 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from proqha.quant import kernels, native

FULL_PRECISION = 32
VALID_BITS = (2, 3, 4, 5, 6, 7, 8, FULL_PRECISION)


@dataclass(frozen=True)
class Grid:
    """The integer grid of one quantizer.

    ``scale`` has one entry per channel along ``axis`` (``axis`` None: a single entry).
    ``odd_levels`` marks the DoReFa grid, whose integers are the odd numbers in [qmin, qmax].
    """

    bits: int
    scale: torch.Tensor
    qmin: int
    qmax: int
    signed: bool
    axis: int | None
    zero_point: int = 0
    odd_levels: bool = False


def signed_range(bits: int) -> tuple[int, int]:
    """Symmetric signed levels ±(2^(b-1)-1): the narrow range, zero point 0."""
    q = 2 ** (bits - 1) - 1
    return -q, q


def unsigned_range(bits: int) -> tuple[int, int]:
    """Unsigned levels 0..2^b-1, zero point 0."""
    return 0, 2**bits - 1


def lsq_grad_factor(numel: int, qmax: int) -> float:
    """LSQ's step-size gradient scale 1/sqrt(N * Qp), which keeps scale updates comparable to weights'."""
    return 1.0 / float(max(numel, 1) * max(qmax, 1)) ** 0.5


class _RoundSTE(torch.autograd.Function):
    """``torch.round`` with the identity gradient (exact values, unlike ``x + (round(x) - x).detach()``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad


class _FakeQuantPerTensor(torch.autograd.Function):
    """``clamp(round(x / s), qmin, qmax) * s`` with LSQ gradients, ``s = kernels.lsq_scale(alpha, qmax)``.

    d/dx: 1 where qmin < x/s < qmax (straight-through), else 0.
    d/ds: round(x/s) - x/s inside the range, qmin or qmax where clipped; times ``grad_factor``; then to
    ``alpha`` through ``lsq_scale`` (``kernels.lsq_alpha_grad``). The kernels, and which runs where
    (fused C or aten operators eagerly, plain math traced), are in ``proqha.quant.kernels``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, qmin: int, qmax: int,  # type: ignore[override]
                grad_factor: float) -> torch.Tensor:
        y = kernels.forward(x, alpha, qmin, qmax)
        ctx.save_for_backward(x, y, alpha)  # x and y are usually kept alive by their neighbours anyway
        ctx.bounds = (qmin, qmax, grad_factor)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, y, alpha = ctx.saved_tensors
        return *kernels.backward(grad, x, y, alpha, *ctx.bounds), None, None, None


def fake_quant_per_tensor(x: torch.Tensor, alpha: torch.Tensor, qmin: int, qmax: int,
                          grad_factor: float) -> torch.Tensor:
    """Fake quantization with a learnable per-tensor clip range ``alpha`` (shape [1]; the scale is
    ``kernels.lsq_scale(alpha, qmax)``); LSQ gradients."""
    return _FakeQuantPerTensor.apply(x, alpha, qmin, qmax, grad_factor)


PerTensorArgs = tuple[torch.Tensor, int, int, float]  # alpha (shape [1]), qmin, qmax, LSQ gradient factor


class _FakeQuantAdd(torch.autograd.Function):
    """``Qo(Qa(a) + Qb(b))``, a residual add between per-tensor LSQ quantizers, in the fused kernels of
    ``proqha.quant.native`` (an input without a quantizer passes unchanged). The values and input
    gradients are those of the quantizers and the add applied one after another; the scale sums differ
    in summation order only."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, alpha_a: torch.Tensor | None,  # type: ignore[override]
                alpha_b: torch.Tensor | None, alpha_o: torch.Tensor, specs: tuple) -> torch.Tensor:
        alphas = (alpha_a, alpha_b, alpha_o)
        ctx.grids = tuple(native.grid_args(kernels.lsq_scale_value(float(alpha), spec[1]), *spec[:2]) if spec
                          else native.PASS_THROUGH for alpha, spec in zip(alphas, specs))
        ctx.specs = specs
        ctx.save_for_backward(a, b, *alphas)  # None where an input has no quantizer
        return native.quant_add_forward(a, b, ctx.grids)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        a, b, *alphas = ctx.saved_tensors
        grad_a, grad_b, sums = native.quant_add_backward(grad, a, b, ctx.grids)
        grads = [None if spec is None else alpha.new_full(alpha.shape, kernels.lsq_alpha_grad_value(
                     total, spec[2], float(alpha), spec[1])) for total, spec, alpha in zip(sums, ctx.specs, alphas)]
        return grad_a, grad_b, *grads, None


def fake_quant_add(a: torch.Tensor, b: torch.Tensor, qa: PerTensorArgs | None, qb: PerTensorArgs | None,
                   qo: PerTensorArgs) -> torch.Tensor:
    """``Qo(Qa(a) + Qb(b))`` fused, each quantizer given as ``PerTensorArgs`` (None: that input as is);
    ``a`` and ``b`` float32 CPU tensors of one shape (``native.usable(a, b)``)."""
    specs = tuple(q and q[1:] for q in (qa, qb, qo))  # (qmin, qmax, factor) or None
    return _FakeQuantAdd.apply(a, b, qa and qa[0], qb and qb[0], qo[0], specs)


class _FakeQuantPerChannel(torch.autograd.Function):
    """Weights: ``clamp(round(w / s_c), qmin, qmax) * s_c`` per output channel (axis 0), ``s =
    kernels.lsq_scale(alpha, qmax)``, with the gradients of torch's learnable per-channel fake
    quantization times ``grad_factor`` (see ``kernels.per_channel_backward_math``), then to ``alpha``:
    multi-threaded, traceable and runnable on meta tensors (torch's own op runs single-threaded on CPU and
    has no meta kernel). Kernels: ``proqha.quant.kernels``."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, alpha: torch.Tensor, qmin: int, qmax: int,  # type: ignore[override]
                grad_factor: float) -> torch.Tensor:
        ctx.save_for_backward(w, alpha)
        ctx.bounds = (qmin, qmax, grad_factor)
        return kernels.per_channel_forward(w, alpha, qmin, qmax)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        w, alpha = ctx.saved_tensors
        return *kernels.per_channel_backward(grad, w, alpha, *ctx.bounds), None, None, None


def fake_quant_per_channel(w: torch.Tensor, alpha: torch.Tensor, qmin: int, qmax: int,
                           grad_factor: float) -> torch.Tensor:
    """Fake quantization of weights with a learnable clip range per output channel (axis 0; the scales
    are ``kernels.lsq_scale(alpha, qmax)``)."""
    return _FakeQuantPerChannel.apply(w, alpha, qmin, qmax, grad_factor)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return _RoundSTE.apply(x)


INT16_MAX = 32767
UINT8_SIGNED_OFFSET = 128  # a signed activation grid travels as uint8 with zero point 128


def uint8_top(qmax: int, signed: bool) -> int:
    """The largest uint8 value an activation grid with top integer ``qmax`` takes inside an x86 int8 kernel:
    ``qmax``, shifted by 128 when the grid is signed (signed grids are stored as uint8 with zero point 128)."""
    return qmax + (UINT8_SIGNED_OFFSET if signed else 0)


def uint8_activation_max(grid: Grid) -> int:
    """``uint8_top`` of an activation grid."""
    return uint8_top(grid.qmax, grid.signed)


def pair_sum_fits_int16(act_max: int, weight_max: int) -> bool:
    """Whether two uint8 x int8 products ``a0*w0 + a1*w1`` always fit int16.

    x86 CPUs without VNNI (AVX2, AVX-512BW) multiply uint8 activations by int8 weights with vpmaddubsw,
    which adds pairs of products in int16 and saturates at 32767; 255 x 127 x 2 = 64770 does not fit.
    """
    return 2 * act_max * weight_max <= INT16_MAX


INT8_KERNELS = ("portable", "vnni")
"""Which int8 kernels a model must be exact on. ``portable``: every CPU, so an 8-bit weight grid on an
input whose uint8 values reach 255 has levels ±64 (``int16_weight_max``), onnxruntime's ``reduce_range``;
``vnni``: only where int8 products are summed in int32 (VNNI, AMX, ARM64, TensorRT), levels ±127."""
LEGACY_QUANT = {"int8_kernels": "vnni", "share_grids": False}
"""``QuantConfig`` fields a model saved before they existed was trained with: the full 8-bit weight grid,
and a conv's input requantizing the add output before it."""


def int16_weight_max(act_max: int) -> int:
    """The largest weight integer whose uint8 x int8 pair sums on inputs up to ``act_max`` fit int16
    (``pair_sum_fits_int16``): 64 for full-range uint8 inputs, 129 for unsigned 7-bit ones (uint8 up to 127)."""
    return INT16_MAX // (2 * max(act_max, 1))


def weight_int_factor(qmax: int, act_max: int) -> int:
    """The largest k with k * qmax <= 127 whose pair sums stay in int16 (at least 1).

    A deployed weight is stored as k times its trained integers at 1/k of its scale: the same real
    weight, but an accumulator step (input scale * weight scale) k times finer, so the int32 bias that
    integer kernels need rounds k times more finely. Quantized layers round their bias to that step.
    ``act_max`` (``uint8_activation_max`` of the input grid) caps k so that a uint8 x int8 kernel cannot
    saturate; a layer that overflows even at k = 1 (8-bit weights on 8-bit activations) is exported
    with uint8 weights instead (see ``pair_sum_fits_int16``).
    """
    qmax = max(qmax, 1)
    return max(1, min(127 // qmax, INT16_MAX // (2 * max(act_max, 1) * qmax)))


def to_integers(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int, axis: int | None) -> torch.Tensor:
    """The integers a tensor maps to on a grid (int32), the same rounding as the fake-quant ops."""
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale = scale.reshape(shape)
    # x * (1/scale), as torch's fake-quantize kernels compute it, so ties round identically.
    return torch.clamp(torch.round(x * (1.0 / scale)), qmin, qmax).to(torch.int32)
