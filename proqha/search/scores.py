"""Candidate sensitivity scores, and snapshot/restore so candidates never deep-copy the network."""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from proqha.quant import BitConfig
from proqha.train import evaluate_loader


class Snapshot:
    """The model's parameters, buffers and bits at one moment, restorable in place (no module copies)."""

    def __init__(self, model: nn.Module) -> None:
        named = list(model.named_parameters()) + list(model.named_buffers())
        self._live = [t for _, t in named]
        self._saved = [t.detach().clone() for t in self._live]
        self.tensors = {name: saved for (name, _), saved in zip(named, self._saved)}
        self.bits = BitConfig.from_model(model)

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Put every parameter, buffer and bit-width back as they were."""
        torch._foreach_copy_(self._live, self._saved)
        self.bits.apply(model)


def hessian_score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, before: Mapping[str, torch.Tensor],
                  lr: float = 1e-3, clip_norm: float | None = 5.0,
                  loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> float:
    """The reference's score: one Adam step on one batch, then
    ``sum over parameters of (sqrt(v) + eps) * (theta_before - theta_after)^2``.

    ``v`` is Adam's (uncorrected) second-moment estimate after that step, a diagonal curvature proxy.
    ``before`` maps parameter names to their values before the step (``Snapshot.tensors``). The model
    is left updated; callers restore it. A non-finite loss scores ``inf``. ``loss_fn(logits, y)``
    defaults to cross-entropy.
    """
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    optimizer = torch.optim.Adam(params, lr=lr, foreach=True)
    model.zero_grad(set_to_none=True)  # gradients left by training must not add to this batch's
    loss = (loss_fn or F.cross_entropy)(model(x), y)
    if not torch.isfinite(loss):
        return math.inf
    loss.backward()
    if clip_norm:
        nn.utils.clip_grad_norm_(params, clip_norm, foreach=True)
    optimizer.step()
    eps = optimizer.defaults["eps"]
    stepped = [(n, p) for n, p in named if optimizer.state.get(p)]  # parameters a gradient reached
    if not stepped:
        return 0.0
    with torch.no_grad():
        weights = torch._foreach_sqrt([optimizer.state[p]["exp_avg_sq"] for _, p in stepped])
        torch._foreach_add_(weights, eps)
        deltas = torch._foreach_sub([before[n].to(p.device) for n, p in stepped], [p for _, p in stepped])
        torch._foreach_mul_(deltas, deltas)
        torch._foreach_mul_(deltas, weights)
        total = torch.stack([d.sum(dtype=torch.float64) for d in deltas]).sum()
    model.zero_grad(set_to_none=True)
    return float(total)


def loss_score(model: nn.Module, loader: DataLoader, device: torch.device,
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> float:
    """Mean loss on held-out calibration data, as the candidate stands (lower is better)."""
    return evaluate_loader(model, loader, device, loss_fn)["test_loss"]


def accuracy_score(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Error rate (percent, lower is better) on held-out calibration data, as the candidate stands."""
    return 100.0 - evaluate_loader(model, loader, device)["test_top1"]
