"""The API's model stages: quantize a model, train it (QAT), evaluate it."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable

import torch
from torch import nn

from proqha.api.common import Batch, place, warn_rows
from proqha.errors import ProqhaError
from proqha.train import LossFn


def quantize(model: nn.Module, example_input: torch.Tensor, bits: int = 8, **options: Any) -> nn.Module:
    """The quantized twin of ``model`` (left untouched), its quantizer ranges calibrated on ``example_input``.

    ``bits``: starting weight/activation bits of the searchable layers (2..8, or 32 for float);
    ``options``: the other ``proqha.quant.QuantConfig`` fields (``weight_quantizer``, ``edge_layers``, ...).
    The result is a plain ``nn.Module`` (in train mode) for your own training loop or ``fit``.
    """
    from proqha.quant import QuantConfig, quantize_model
    from proqha.train import forward_checked

    if not isinstance(model, nn.Module):
        raise ProqhaError(f"quantize: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        raise ProqhaError("quantize: example_input must be a batch tensor (batch, channels, ...)")
    try:
        config = QuantConfig(bits=bits, **options)
    except (TypeError, ValueError) as exc:
        raise ProqhaError(f"quantize: {exc}") from None
    qmodel = quantize_model(model, config, tuple(example_input.shape[1:]))
    forward_checked(qmodel, example_input, None, "quantize: the model cannot run on example_input {shape}")
    return qmodel


def fit(qmodel: nn.Module, train_loader: Iterable[Batch], test_loader: Iterable[Batch] | None = None, *,
        epochs: int = 1, lr: float | None = None, optimizer: str | torch.optim.Optimizer = "adam",
        weight_decay: float = 0.0, loss: LossFn | None = None, device: str | torch.device | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None, compile: bool = False) -> list[dict[str, Any]]:
    """Train ``qmodel`` (quantization-aware) for ``epochs`` over ``train_loader``; returns one dict per epoch
    (``epoch``, ``lr``, ``train_loss``, ``train_top1``, with ``test_loader`` also ``test_loss``, ``test_top1``,
    ``test_top5``; ``time_s``).

    ``optimizer``: "adam" or "sgd" (momentum 0.9; ``lr`` defaults to 1e-3 and 0.1), with a per-batch cosine
    schedule and no weight decay on biases, BN and quantizer ranges; or your own optimizer, used as it is.
    ``loss(logits, targets)`` defaults to cross-entropy. ``device``: None keeps the model where it is.
    ``compile``: run training and evaluation through ``torch.compile`` (eagerly, with one warning, where it
    cannot compile). On a CPU this sets glibc's allocator to keep freed memory for the rest of the process
    (``proqha.train.local_training_net``: training steps reuse it instead of faulting pages in again).
    """
    from proqha.health import OutputHealth
    from proqha.train import evaluate, local_training_net, make_optimizer, output_warnings, train_one_epoch
    from proqha.train_config import DEFAULT_LR, OPTIMIZERS

    if epochs < 1:
        raise ProqhaError(f"fit: epochs must be >= 1, got {epochs}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ProqhaError(f"fit: lr must be > 0, got {lr}")
    dev = place(qmodel, device)
    scheduler = None
    if isinstance(optimizer, torch.optim.Optimizer):
        opt = optimizer
    elif optimizer in OPTIMIZERS:
        opt = make_optimizer(qmodel, optimizer, lr if lr is not None else DEFAULT_LR[optimizer], weight_decay)
        steps = len(train_loader) if hasattr(train_loader, "__len__") else 1  # type: ignore[arg-type]
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps))
    else:
        raise ProqhaError(f"fit: optimizer must be one of {', '.join(OPTIMIZERS)} or a torch optimizer, "
                          f"got {optimizer!r}")
    rows = []
    net = local_training_net(qmodel, dev, compile)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch, "lr": opt.param_groups[0]["lr"]}
        row |= train_one_epoch(net, train_loader, opt, scheduler, dev, epoch, loss_fn=loss)
        if test_loader is not None:
            health = OutputHealth()
            row |= evaluate(net, test_loader, dev, loss, health)
            warn_rows(row, output_warnings(qmodel, health, test_loader, dev), f"epoch {epoch}: ")
        row["time_s"] = time.perf_counter() - t0
        rows.append(row)
        if on_epoch is not None:
            on_epoch(row)
    return rows


def evaluate(qmodel: nn.Module, loader: Iterable[Batch], loss: LossFn | None = None,
             device: str | torch.device | None = None) -> dict[str, float]:
    """``test_loss``, ``test_top1`` and ``test_top5`` (percent) of ``qmodel`` over ``loader``, in eval mode
    (where quantized layers compute as the deployed integer kernels do). A class never predicted while the
    float network predicts it, or logits at their quantizer's limit, are warned about (``warnings``) and
    listed under ``warnings``."""
    from proqha.health import OutputHealth
    from proqha.train import evaluate as run_evaluate
    from proqha.train import output_warnings

    dev, health = place(qmodel, device), OutputHealth()
    row: dict[str, Any] = dict(run_evaluate(qmodel, loader, dev, loss, health))
    warn_rows(row, output_warnings(qmodel, health, loader, dev), "")
    return row
