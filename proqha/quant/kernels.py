"""The quantizers' fake-quantization kernels: their definitions, and which implementation runs where.

Activations (per tensor, LSQ gradients): ``forward_math``/``backward_math`` define them in plain
out-of-place operators, which run wherever ``traced`` holds: inside a ``torch.compile``d model (where
TorchInductor fuses them with their neighbours), under a dispatch mode (make_fx, FakeTensorMode), on
meta tensors and on tensor subclasses. Plain float32 CPU tensors take the fused one-pass C kernels of
``proqha.quant.native`` where they could be built: the same values and d/dx, the scale sum accumulated
in double, and the scale and d/dalpha taken on the host in the same float32 steps (``lsq_scale_value``,
``lsq_alpha_grad_value``; one-element tensor operators cost about 10 µs each, about ten per quantizer
and step). Other plain tensors take ``_aten_forward``/``_aten_backward``: the same values with fewer
allocations (in-place passes after one output; on the CPU a mask taken on ``x`` itself and the scale
read on the host). The scale sums differ only in float summation order, and aten's CPU straight-through
mask only where ``x`` sits exactly on a clip bound.

Weights (per output channel): ``per_channel_forward_math``/``per_channel_backward_math``, plain operators,
except for float32 CPU tensors where the fused kernels exist: the same values and d/dw in one call each
(a weight is small, and its dozen small operators cost more than their arithmetic), the scales and
d/dalpha included.
"""

from __future__ import annotations

import torch
from torch import nn

from proqha.quant import native

_PLAIN_TENSORS = (torch.Tensor, nn.Parameter)


SCALE_EPS = 1e-8  # the smallest clip range a quantizer's scale is derived from
SCALE_EPS_32 = native.float32(SCALE_EPS)  # as float32 tensors hold it


def lsq_scale(alpha: torch.Tensor, qmax: int) -> torch.Tensor:
    """A quantizer's step size(s) from its learnable clip range: ``max(|alpha|, SCALE_EPS) / qmax``."""
    return alpha.abs().clamp_min(SCALE_EPS) / qmax


def lsq_alpha_grad(grad_scale: torch.Tensor, alpha: torch.Tensor, qmax: int) -> torch.Tensor:
    """d/dalpha from d/dscale through ``lsq_scale``: what autograd computes for it, in its order (so the
    same bits), without its three graph nodes per quantizer. clamp_min's gradient passes where |alpha|
    reaches SCALE_EPS as a double, which for float32 values is ``> SCALE_EPS`` compared in float32."""
    return torch.where(alpha.abs() > SCALE_EPS, grad_scale / qmax, 0.0) * alpha.sgn()


def lsq_scale_value(alpha: float, qmax: int) -> float:
    """``lsq_scale`` of one clip range on the host: the same float32 value, without tensor operators."""
    a = abs(native.float32(alpha))
    return native.float32((SCALE_EPS_32 if a < SCALE_EPS_32 else a) / qmax)  # NaN stays NaN, as in clamp_min


def lsq_alpha_grad_value(scale_sum: float, grad_factor: float, alpha: float, qmax: int) -> float:
    """``lsq_alpha_grad(float32(scale_sum) * grad_factor, alpha, qmax)`` of one clip range on the host: the
    same float32 steps (the factor taken as float32, as a tensor times a Python float does)."""
    grad_scale = native.float32(native.float32(scale_sum) * native.float32(grad_factor))
    a = native.float32(alpha)
    sign = float((a > 0) - (a < 0))  # torch.sgn: 0 for 0, -0 and NaN
    return native.float32((native.float32(grad_scale / qmax) if abs(a) > SCALE_EPS_32 else 0.0) * sign)


def forward_math(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``clamp(round(x * (1/s)), qmin, qmax) * s`` (``x * (1/s)``, as torch's fake-quantize kernels round)."""
    return torch.clamp(torch.round(x * (1.0 / scale)), qmin, qmax) * scale


def backward_math(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, qmin: int,
                  qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LSQ's gradients before its gradient factor: d/dx is ``grad`` where qmin < x/s < qmax, else 0; the
    scale's is ``sum(grad * (q - x/s * inside))`` with q the clamped integers (shape [1]).
    Written with ``where`` and ``sum``: with ``hardtanh_backward`` and two ``dot``s instead, TorchInductor's
    CPU code for a compiled ResNet-20 step was 1.6x slower (``benchmarks/qat_overhead.py``)."""
    xs = x * (1.0 / scale)
    inside = (xs > qmin) & (xs < qmax)
    grad_x = torch.where(inside, grad, 0.0)
    q = torch.clamp(torch.round(xs), qmin, qmax)
    return grad_x, torch.sum(grad * q - grad_x * xs).reshape(1)


def _per_channel(scale: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return scale.reshape(-1, *([1] * (w.dim() - 1)))


def per_channel_forward_math(w: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Weights: ``clamp(round(w * (1/s_c)), qmin, qmax) * s_c`` per output channel (axis 0)."""
    s = _per_channel(scale, w)
    return torch.clamp(torch.round(w * (1.0 / s)), qmin, qmax) * s


def per_channel_backward_math(grad: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, qmin: int,
                              qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of torch's learnable per-channel fake quantization before LSQ's factor: d/dw is
    ``grad`` where round(w/s) lies in [qmin, qmax]; d/ds_c sums, over the channel, ``grad`` times
    round(w/s) - w/s there and qmin or qmax elsewhere."""
    ws = w * (1.0 / _per_channel(scale, w))
    q = torch.round(ws)
    qc = torch.clamp(q, qmin, qmax)
    inside = q == qc
    local = qc - ws * inside
    channels = len(scale)
    return grad * inside, torch.linalg.vecdot(grad.reshape(channels, -1), local.reshape(channels, -1))


def _aten_forward(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    # one allocation, the output; in-place passes after it (torch's fake-quantize kernel is 7x slower on CPU)
    return (x * (1.0 / scale)).clamp_(qmin, qmax).round_().mul_(scale)


def _aten_backward(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, qmin: int,
                   qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    g, inv = grad.contiguous(), 1.0 / scale
    if x.is_cuda:  # keep the scale on the device: no host synchronisation
        xs = x * inv
        g_x = torch.ops.aten.hardtanh_backward(g, xs, qmin, qmax)
        dot_gx_xs = torch.dot(g_x.reshape(-1), xs.reshape(-1))
    else:  # on the CPU reading the scale is free, and the mask needs no temporary tensor
        step = float(scale)
        g_x = torch.ops.aten.hardtanh_backward(g, x, qmin * step, qmax * step)
        dot_gx_xs = torch.dot(g_x.reshape(-1), x.reshape(-1)) * inv
    # sum(g * q) - sum(g * x/s * inside), with q = y / s
    return g_x, (torch.dot(g.reshape(-1), y.reshape(-1)) * inv - dot_gx_xs).reshape(1)


def traced(x: torch.Tensor) -> bool:
    """Whether ``x`` takes the plain-math branch: traced (torch.compile, or a dispatch mode that records or
    fakes operators: make_fx, FakeTensorMode, torch.export), without data (meta), or a tensor subclass
    (fake, functional) that a C kernel cannot read."""
    return (torch.compiler.is_compiling() or x.device.type == "meta" or torch._C._len_torch_dispatch_stack() > 0
            or type(x) not in _PLAIN_TENSORS)


def recording(x: torch.Tensor) -> bool:
    """Whether ``x`` is being recorded or faked rather than computed (``traced`` except torch.compile,
    which keeps in-place updates of a module's state as eager runs them)."""
    return traced(x) and not torch.compiler.is_compiling()


def _fused(x: torch.Tensor, alpha: torch.Tensor) -> bool:
    return not traced(x) and native.usable(x, alpha)


def forward(x: torch.Tensor, alpha: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """The activation quantizer's forward on the grid of clip range ``alpha`` (shape [1]): the math when
    traced, the fused kernel on a CPU that has it (its scale taken on the host), else aten operators."""
    if _fused(x, alpha):
        return native.forward(x, lsq_scale_value(float(alpha), qmax), qmin, qmax)
    scale = lsq_scale(alpha, qmax)
    return forward_math(x, scale, qmin, qmax) if traced(x) else _aten_forward(x, scale, qmin, qmax)


def backward(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor, qmin: int, qmax: int,
             grad_factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The activation quantizer's backward (``y``: the forward's output): d/dx, and d/dalpha with LSQ's
    ``grad_factor`` (``lsq_alpha_grad``; on the fused path the same float32 operations on the host)."""
    if _fused(x, alpha):
        a = float(alpha)
        grad_x, total = native.backward(grad, x, lsq_scale_value(a, qmax), qmin, qmax)
        grad_alpha = lsq_alpha_grad_value(total, grad_factor, a, qmax)
        return grad_x, alpha.new_full(alpha.shape, grad_alpha)
    scale = lsq_scale(alpha, qmax)
    if traced(x):
        grad_x, grad_s = backward_math(grad, x, scale, qmin, qmax)
    else:
        grad_x, grad_s = _aten_backward(grad, x, y, scale, qmin, qmax)
    return grad_x, lsq_alpha_grad(grad_s * grad_factor, alpha, qmax)


def per_channel_forward(w: torch.Tensor, alpha: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """The weight quantizer's forward on the grids of clip ranges ``alpha`` (one per output channel): the
    fused kernel on a CPU that has it, else the math."""
    if _fused(w, alpha):
        return native.per_channel_forward(w, alpha, qmin, qmax, SCALE_EPS_32)
    return per_channel_forward_math(w, lsq_scale(alpha, qmax), qmin, qmax)


def per_channel_backward(grad: torch.Tensor, w: torch.Tensor, alpha: torch.Tensor, qmin: int, qmax: int,
                         grad_factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight quantizer's backward: d/dw, and d/dalpha with LSQ's ``grad_factor`` (the fused kernel,
    which takes the same float32 steps as ``lsq_alpha_grad``, on a CPU that has it; else the math)."""
    if _fused(w, alpha):
        return native.per_channel_backward(grad, w, alpha, qmin, qmax, grad_factor, SCALE_EPS_32)
    grad_w, grad_s = per_channel_backward_math(grad, w, lsq_scale(alpha, qmax), qmin, qmax)
    return grad_w, lsq_alpha_grad(grad_s * grad_factor, alpha, qmax)
