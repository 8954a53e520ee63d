"""Evaluating a classifier: loss, top-1 and top-5 over a loader (``evaluate_loader``, ties broken as the deployed
argmax breaks them) and the output-health warnings of that pass (``output_warnings``)."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from proqha.health import OutputHealth, predicted_classes
from proqha.train_step import LossFn, bad_label_error, not_class_indices


def _topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> list[int]:
    """Rows whose target ranks below k, ties broken by the lower index as ``predictions`` breaks them (so
    top-1 is the deployed argmax's top-1, and top-k does not depend on the order ``topk`` gives ties)."""
    target = target.long().unsqueeze(1)
    t = logits.gather(1, target)
    lower = torch.arange(logits.shape[1], device=logits.device) < target
    rank = (logits > t).sum(1) + ((logits == t) & lower).sum(1)
    rank = torch.where(torch.isnan(logits).any(1), logits.shape[1], rank)  # a NaN row predicts nothing
    return [int((rank < k).sum()) for k in ks]


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader: Iterable, device: torch.device, loss_fn: LossFn | None = None,
             health: OutputHealth | None = None) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (percent) over ``loader``; ``loss_fn`` as in ``train_one_epoch``;
    ``health`` gathers what ``output_warnings`` reports."""
    model.eval()
    loss_sum, top1, top5, seen = 0.0, 0, 0, 0
    if health is not None:
        health.start(model)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        if health is not None:
            health.add(logits, y)
        if loss_fn is None:
            if not_class_indices(y, logits.shape[1]):
                raise bad_label_error(loader, y, logits.shape[1], "test", "evaluating")
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        else:
            loss_sum += float(loss_fn(logits.float(), y)) * len(y)
        c1, c5 = _topk_correct(logits, y, (1, 5))
        top1, top5, seen = top1 + c1, top5 + c5, seen + len(y)
    n = max(seen, 1)
    return {"test_loss": loss_sum / n, "test_top1": 100.0 * top1 / n, "test_top5": 100.0 * top5 / n}


def output_warnings(model: nn.Module, health: OutputHealth, loader: Iterable, device: torch.device) -> list[str]:
    """The warnings of an evaluation pass (``proqha.health``); the float twin is evaluated only when a class
    was never predicted."""
    from proqha.quant import float_twin

    lost = health.never_predicted()
    return health.warnings(predicted_classes(float_twin(model), loader, device) if lost else ())
