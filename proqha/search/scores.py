"""Candidate sensitivity scores, and snapshot/restore so candidates never deep-copy the network."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from proqha.train import evaluate

Snapshot = dict[str, Any]


def snapshot(model: nn.Module) -> Snapshot:
    """A copy of the model's state (parameters, buffers, quantizer bits) to restore candidates from."""
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}


def restore(model: nn.Module, snap: Snapshot) -> None:
    """Put the model back to ``snap`` (in place; no new modules)."""
    model.load_state_dict(snap)


def hessian_score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, before: Snapshot, lr: float = 1e-3,
                  clip_norm: float | None = 5.0) -> float:
    """The reference's score: one Adam step on one batch, then
    ``sum over parameters of (sqrt(v) + eps) * (theta_before - theta_after)^2``.

    ``v`` is Adam's (uncorrected) second-moment estimate after that step, a diagonal curvature proxy.
    ``before`` holds the parameters as they were (the step's snapshot). The model is left updated;
    callers restore it. A non-finite loss scores ``inf``.
    """
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.Adam([p for _, p in named], lr=lr)
    loss = F.cross_entropy(model(x), y)
    if not torch.isfinite(loss):
        return math.inf
    loss.backward()
    if clip_norm:
        nn.utils.clip_grad_norm_([p for _, p in named], clip_norm)
    optimizer.step()
    eps = optimizer.defaults["eps"]
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for name, p in named:
        state = optimizer.state.get(p)
        if not state:  # no gradient reached this parameter
            continue
        delta = before[name].to(p.device) - p.detach()
        total += ((state["exp_avg_sq"].sqrt() + eps) * delta.square()).sum(dtype=torch.float64)
    model.zero_grad(set_to_none=True)
    return float(total)


def accuracy_score(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Error rate (percent, lower is better) on held-out calibration data, as the candidate stands."""
    return 100.0 - evaluate(model, loader, device)["test_top1"]
