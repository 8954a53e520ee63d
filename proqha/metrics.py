"""Accuracy metrics a run can be judged by, accumulated over batches of (logits, integer labels): top-1 (per
image for a classifier, per pixel for a dense prediction of shape (batch, classes, *spatial)), pixel accuracy,
and mean intersection over union. Each gives a percentage, higher is better; ``metric_of`` resolves a name."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

IGNORE_INDEX = 255  # the label of pixels no class claims (VOC's border), left out of every metric


def positions(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, classes) logits and their labels: a classifier's as they are, a dense prediction's one row
    per pixel."""
    if logits.dim() > 2:
        return logits.movedim(1, -1).reshape(-1, logits.shape[1]), target.reshape(-1)
    return logits, target


@runtime_checkable
class Metric(Protocol):
    """An accuracy accumulated over batches: ``reset``, ``update`` per batch, then ``value`` (percent)."""

    name: str

    def reset(self) -> None: ...

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None: ...

    def value(self) -> float: ...


def labelled(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Which positions count: every image of a classifier (255 is a class of ImageNet's), every pixel of a
    dense prediction but those labelled ``IGNORE_INDEX``."""
    return target != IGNORE_INDEX if logits.dim() > 2 else torch.ones_like(target, dtype=torch.bool)


class PixelAccuracy:
    """Labelled positions whose argmax is their label (the first of tied logits, as a deployed argmax picks)."""

    name = "pixel_accuracy"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.correct, self.seen = 0, 0

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        keep = labelled(logits, target).reshape(-1)
        logits, target = positions(logits, target)
        self.correct += int((logits.argmax(1)[keep] == target[keep]).sum())
        self.seen += int(keep.sum())

    def value(self) -> float:
        return 100.0 * self.correct / max(self.seen, 1)


class Top1(PixelAccuracy):
    """Top-1 accuracy: per image for a classifier, per labelled pixel for a dense prediction."""

    name = "top1"


class MeanIoU:
    """Mean over classes of |prediction and label| / |prediction or label| (classes that occur in neither
    are left out), from a confusion matrix summed over every labelled position."""

    name = "miou"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.confusion: torch.Tensor | None = None

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        classes = logits.shape[1]
        keep = labelled(logits, target).reshape(-1)
        logits, target = positions(logits, target)
        keep &= (target >= 0) & (target < classes)
        pairs = target[keep].long() * classes + logits.argmax(1)[keep]
        counts = torch.bincount(pairs.cpu(), minlength=classes * classes).reshape(classes, classes)
        self.confusion = counts if self.confusion is None else self.confusion + counts

    def value(self) -> float:
        if self.confusion is None:
            return 0.0
        hits = self.confusion.diag().double()
        union = self.confusion.sum(0).double() + self.confusion.sum(1).double() - hits
        present = union > 0
        return float(100.0 * (hits[present] / union[present]).mean()) if present.any() else 0.0


METRICS = {m.name: m for m in (Top1, PixelAccuracy, MeanIoU)}


def metric_of(metric: str | Metric | None) -> Metric | None:
    """A metric by name (top1, pixel_accuracy, miou), a ``Metric`` as it is, or None."""
    if metric is None or isinstance(metric, Metric):
        return metric
    if metric not in METRICS:
        from proqha.errors import OptionError

        raise OptionError("metric", f"must be one of {', '.join(METRICS)} or a proqha.metrics.Metric, got {metric!r}")
    return METRICS[metric]()
