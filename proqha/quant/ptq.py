"""Post-training calibration of a quantized twin: its quantizer ranges set from calibration batches
(``calibrate_ranges``) and, optionally, its BatchNorm statistics re-estimated under quantization
(``recalibrate_batchnorm``).

Activation statistics are gathered on the float network (every quantizer off), as onnxruntime's and
TensorRT's calibrators do: one pass for each quantizer's largest input value, one for a histogram of its
input magnitudes over that range. A range is any positive number, and the grid is derived from it, so
every method keeps the exported graph exact.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from proqha.quant.convert import quant_layers
from proqha.quant.quantizers import MAX_RANGE_BITS, DoReFaWeightQuantizer, Quantizer, WeightQuantizer

BINS = 2048  # histogram bins of one quantizer's input magnitudes
MSE_CANDIDATES = 128  # ranges the mse method tries, evenly spaced up to the largest value
WEIGHT_CANDIDATES = 50  # per-channel weight ranges the mse method tries, from 0.3 to 1.0 of max |w|
MIN_RANGE = 1e-4  # as ``Quantizer.initialize`` clamps it

Batches = Iterable[torch.Tensor]
Progress = Callable[[str, int, int], None]  # (phase, batch done, batches)


def lowest_bits(model: nn.Module) -> int:
    """The narrowest weight or activation width of the model's quantized layers (32 when none is on)."""
    return min((b for layer in quant_layers(model).values() for b in (layer.w_bits, layer.a_bits)), default=32)


def _activation_quantizers(model: nn.Module) -> list[Quantizer]:
    """The enabled quantizers of a model other than weight quantizers, skipping those that share another's
    grid (their range follows it)."""
    weights = {id(layer.weight_quantizer) for layer in quant_layers(model).values()}
    return [q for q in model.modules() if isinstance(q, Quantizer) and q.enabled and id(q) not in weights
            and not q.shares_grid]


@contextlib.contextmanager
def _float(model: nn.Module) -> Iterator[None]:
    """Every quantizer off for the duration (the float network), the bits restored after."""
    quantizers = [q for q in model.modules() if isinstance(q, Quantizer)]
    bits = [q.bits for q in quantizers]
    for q in quantizers:
        q.bits = 32
    try:
        yield
    finally:
        for q, b in zip(quantizers, bits):
            q.bits = b


def _magnitudes(q: Quantizer, x: torch.Tensor) -> torch.Tensor:
    """What a quantizer's range covers: |x| on a signed grid, x above 0 on an unsigned one (below 0 is the
    ReLU it absorbs, or its clamp at 0)."""
    x = x.detach().float()
    return x.abs() if q.signed else x.clamp_min(0)


@torch.no_grad()
def _gather(model: nn.Module, quantizers: list[Quantizer], batches: list[torch.Tensor], device: torch.device,
            phase: str, each: Callable[[int, torch.Tensor], None], on_batch: Progress | None) -> None:
    """Run the float network over ``batches``, handing each quantizer's input (by index) to ``each``."""
    hooks = [q.register_forward_pre_hook(lambda mod, args, i=i: each(i, args[0])) for i, q in enumerate(quantizers)]
    try:
        model.eval()
        with _float(model):
            for n, x in enumerate(batches):
                model(x.to(device))
                if on_batch is not None:
                    on_batch(phase, n + 1, len(batches))
    finally:
        for h in hooks:
            h.remove()


def _histogram_range(q: Quantizer, hist: torch.Tensor, top: float, method: str, percentile: float) -> float:
    """The range ``method`` picks from a histogram of magnitudes over [0, top]."""
    if method == "minmax" or q.tracks_range or top <= 0:  # logits never clip (``tracks_range``)
        return top
    edges = torch.linspace(0, top, BINS + 1, dtype=torch.float64)
    counts = hist.double()
    if method == "percentile":
        cdf = counts.cumsum(0) / counts.sum().clamp_min(1)
        k = int(torch.searchsorted(cdf, torch.tensor([percentile / 100], dtype=torch.float64)).clamp_max(BINS - 1))
        return float(edges[k + 1])
    centers = (edges[:-1] + edges[1:]) / 2
    qmin, qmax = q.qrange()
    low = 0 if not q.signed else -qmax  # magnitudes: the negative side mirrors the positive one
    alphas = torch.linspace(top / MSE_CANDIDATES, top, MSE_CANDIDATES, dtype=torch.float64)
    steps = (alphas / qmax).unsqueeze(1)
    rounded = (centers / steps).round().clamp(low, qmax) * steps
    errors = (counts * (centers - rounded) ** 2).sum(1)
    return float(alphas[int(errors.argmin())])


@torch.no_grad()
def _fit_weight_range(q: WeightQuantizer, w: torch.Tensor) -> None:
    """Per output channel, the range (0.3..1.0 of max |w|) with the least squared rounding and clipping error."""
    flat = w.detach().flatten(1).float()
    top = flat.abs().amax(1).clamp_min(MIN_RANGE)
    qmin, qmax = q.qrange()
    best, best_err = top.clone(), torch.full_like(top, float("inf"))
    for f in torch.linspace(0.3, 1.0, WEIGHT_CANDIDATES):
        alpha = top * f
        step = (alpha / qmax).unsqueeze(1)
        err = ((flat - (flat / step).round().clamp(qmin, qmax) * step) ** 2).sum(1)
        better = err < best_err
        best, best_err = torch.where(better, alpha, best), torch.where(better, err, best_err)
    q.alpha.copy_(best.to(q.alpha))
    q.initialized = True


@torch.no_grad()
def calibrate_ranges(model: nn.Module, batches: Iterable[torch.Tensor], method: str = "mse",
                     device: torch.device | str = "cpu", percentile: float = 99.99,
                     on_batch: Progress | None = None) -> None:
    """Set every enabled quantizer's range of a quantized twin from ``batches`` (input tensors).

    Activations: ``minmax`` takes the largest value, ``percentile`` the ``percentile``-th of the values,
    ``mse`` the range with the least squared rounding and clipping error over the histogram; the logits'
    quantizer always takes the largest (it must not clip). Weights: max |w| per channel, and with ``mse``
    the per-channel range of least squared error below 8 bit (8-bit weights keep max |w|: they follow
    it in training). A DoReFa weight grid has no range to set."""
    device = torch.device(device)
    batches = list(batches)
    if not batches:
        raise ValueError("calibration needs at least one batch")
    quantizers = _activation_quantizers(model)
    tops = [0.0] * len(quantizers)

    def largest(i: int, x: torch.Tensor) -> None:
        tops[i] = max(tops[i], float(_magnitudes(quantizers[i], x).amax())) if x.numel() else tops[i]

    _gather(model, quantizers, batches, device, "ranges", largest, on_batch)
    hists = [torch.zeros(BINS, dtype=torch.float64) for _ in quantizers]
    if method != "minmax":
        def histogram(i: int, x: torch.Tensor) -> None:
            if tops[i] > 0:
                hists[i] += torch.histc(_magnitudes(quantizers[i], x), BINS, 0, tops[i]).double().cpu()

        _gather(model, quantizers, batches, device, "histograms", histogram, on_batch)
    for q, top, hist in zip(quantizers, tops, hists):
        alpha = max(_histogram_range(q, hist, top, method, percentile), MIN_RANGE)
        q.alpha.data.fill_(alpha)
        q.initialized = True
    for layer in quant_layers(model).values():
        q, w = layer.weight_quantizer, layer.weight
        if not q.enabled or isinstance(q, DoReFaWeightQuantizer):
            continue
        if method == "mse" and isinstance(q, WeightQuantizer) and q.bits < MAX_RANGE_BITS:
            _fit_weight_range(q, w)
        else:
            q.initialize(w)
    model.eval()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str = "cpu",
                          on_batch: Progress | None = None) -> int:
    """Re-estimate the running mean and variance of every BatchNorm from ``batches`` with the model
    quantized as it is (a cumulative average over the batches); every quantizer range stays as it was but
    the logits' (``tracks_range``), re-measured after so that the new statistics never clip it. Returns how
    many BatchNorm layers were re-estimated."""
    device = torch.device(device)
    batches = list(batches)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or not batches:
        return 0
    ranges = [(q, q.alpha.detach().clone()) for q in model.modules() if isinstance(q, Quantizer)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    try:
        model.train()
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.eval()
        for n, x in enumerate(batches):
            model(x.to(device))
            if on_batch is not None:
                on_batch("batchnorm", n + 1, len(batches))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        for q, alpha in ranges:  # a tracked range (the logits') moves in training mode
            q.alpha.copy_(alpha)
        model.eval()
    _remeasure_tracked(model, batches, device)
    return len(norms)


@torch.no_grad()
def _remeasure_tracked(model: nn.Module, batches: list[torch.Tensor], device: torch.device) -> None:
    """Set each tracked range (the logits', which must not clip) to the largest input it sees with the model
    as it now computes, quantized."""
    tracked = [q for q in model.modules() if isinstance(q, Quantizer) and q.enabled and q.tracks_range]
    tops = [0.0] * len(tracked)

    def largest(i: int, x: torch.Tensor) -> None:
        tops[i] = max(tops[i], float(_magnitudes(tracked[i], x).amax())) if x.numel() else tops[i]

    hooks = [q.register_forward_pre_hook(lambda mod, args, i=i: largest(i, args[0])) for i, q in enumerate(tracked)]
    try:
        for x in batches:
            model(x.to(device))
    finally:
        for h in hooks:
            h.remove()
    for q, top in zip(tracked, tops):
        q.alpha.data.fill_(max(top, MIN_RANGE))
