"""Warnings about what a quantized classifier outputs, which accuracy alone hides: a class it never
predicts although the float network predicts it, and logits that sit at their quantizer's clip limit
(where they tie and get no gradient)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

CLIP_WARN_PERCENT = 2.0
"""Warn when more than this share of the logits sits at the output grid's top or bottom."""


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """The predicted class of each row: the first index of its maximum, as onnxruntime's ArgMax, numpy and
    every deployed argmax pick it (logits on an output grid often tie; ``topk`` orders ties arbitrarily)."""
    return logits.argmax(dim=1)


def output_quantizer(model: nn.Module):
    """The quantizer on the model's logits (the one tracking its range), or None."""
    from proqha.quant.quantizers import Quantizer

    found = [m for m in model.modules() if isinstance(m, Quantizer) and m.tracks_range and m.enabled]
    return found[0] if len(found) == 1 else None


@dataclass
class OutputHealth:
    """Counts gathered over an evaluation pass (``add`` per batch), then ``warnings``."""

    classes: int = 0
    predicted: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    labelled: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    at_clip: int = 0
    logits: int = 0
    limits: tuple[float, float] | None = None

    def start(self, model: nn.Module) -> None:
        q = output_quantizer(model)
        if q is not None and q.initialized:
            scale = float(q.scale().reshape(-1)[0])
            qmin, qmax = q.qrange()
            self.limits = (qmin * scale, qmax * scale)

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        if logits.dim() != 2:
            return
        if self.classes == 0:
            self.classes = logits.shape[1]
            self.predicted = torch.zeros(self.classes, dtype=torch.long)
            self.labelled = torch.zeros(self.classes, dtype=torch.long)
        self.predicted += torch.bincount(predictions(logits).cpu(), minlength=self.classes)[: self.classes]
        if not y.is_floating_point() and y.dim() == 1:
            self.labelled += torch.bincount(y.cpu().clamp(0, self.classes - 1), minlength=self.classes)
        if self.limits is not None:
            lo, hi = self.limits
            tol = 1e-6 * max(abs(lo), abs(hi))
            self.at_clip += int(((logits >= hi - tol) | (logits <= lo + tol)).sum())
            self.logits += logits.numel()

    def never_predicted(self) -> list[int]:
        """Classes that have test images but were never predicted."""
        return [c for c in range(self.classes) if self.labelled[c] > 0 and self.predicted[c] == 0]

    def clip_percent(self) -> float:
        return 100.0 * self.at_clip / self.logits if self.logits else 0.0

    def warnings(self, float_predicted: Iterable[int] = ()) -> list[str]:
        """One line per problem; ``float_predicted``: the never-predicted classes the float twin predicts
        (a class the float network does not predict either is the data's or the training's, not ours)."""
        lines = []
        lost = sorted(set(self.never_predicted()) & set(float_predicted))
        if lost:
            lines.append(f"class{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))} never predicted on the "
                         "test split, while the float network (quantizers off) predicts "
                         f"{'them' if len(lost) > 1 else 'it'}")
        if self.clip_percent() > CLIP_WARN_PERCENT:
            lines.append(f"{self.clip_percent():.1f}% of the logits sit at the output quantizer's limit "
                         f"(+-{max(abs(v) for v in self.limits or (0, 0)):.3g}): they tie and get no gradient")
        return lines


@torch.no_grad()
def predicted_classes(model: nn.Module, loader: Iterable, device: torch.device) -> set[int]:
    """The classes ``model`` (in eval mode) predicts for at least one sample of ``loader``."""
    model.eval()
    seen: set[int] = set()
    for x, _ in loader:
        seen |= set(predictions(model(x.to(device))).tolist())
    return seen
