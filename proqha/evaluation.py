"""Evaluating a classifier (or a dense prediction, per pixel): loss, top-1 and top-5 over a loader
(``evaluate_loader``, ties broken as the deployed argmax breaks them), a chosen ``proqha.metrics`` metric, and
the output-health warnings of that pass (``output_warnings``)."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from proqha.health import OutputHealth, predicted_classes
from proqha.metrics import Metric, positions
from proqha.train_step import LossFn, bad_label_error, forward, not_class_indices


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
                    health: OutputHealth | None = None, metric: Metric | None = None) -> dict[str, float]:
    """Loss (per sample), top-1 and top-5 accuracy (percent; per pixel for a dense prediction) over ``loader``,
    and with ``metric`` its value as ``test_metric``; ``loss_fn`` as in ``train_one_epoch``; ``health``
    gathers what ``output_warnings`` reports."""
    model.eval()
    loss_sum, top1, top5, seen, samples = 0.0, 0, 0, 0, 0
    if health is not None:
        health.start(model)
    if metric is not None:
        metric.reset()
    for i, (x, y) in enumerate(loader):
        x, y = x.to(device), y.to(device)
        logits = forward(model, x, i == 0, "test")
        if health is not None:
            health.add(logits, y)
        if loss_fn is None:
            if not_class_indices(y, logits.shape[1]):
                raise bad_label_error(loader, y, logits.shape[1], "test", "evaluating")
            loss_sum += float(F.cross_entropy(logits, y)) * len(y)  # per sample (a dense one: its pixels' mean)
        else:
            loss_sum += float(loss_fn(logits.float(), y)) * len(y)
        if metric is not None:
            metric.update(logits, y)
        rows, labels = positions(logits, y)
        c1, c5 = _topk_correct(rows, labels, (1, 5))
        top1, top5, seen, samples = top1 + c1, top5 + c5, seen + len(labels), samples + len(y)
    n = max(seen, 1)
    row = {"test_loss": loss_sum / max(samples, 1), "test_top1": 100.0 * top1 / n, "test_top5": 100.0 * top5 / n}
    return row | ({"test_metric": metric.value()} if metric is not None else {})


def output_warnings(model: nn.Module, health: OutputHealth, loader: Iterable, device: torch.device) -> list[str]:
    """The warnings of an evaluation pass (``proqha.health``); the float twin is evaluated only when a class
    was never predicted."""
    from proqha.quant import float_twin

    lost = health.never_predicted()
    return health.warnings(predicted_classes(float_twin(model), loader, device) if lost else ())
