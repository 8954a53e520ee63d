"""Calibrating a quantized model before training: one checked training-mode forward sets the quantizer
ranges not yet set, and a model that cannot run on the data, or does not return ``(batch, classes)``
logits, is one ``ProqhaError`` line before anything trains."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from proqha.errors import ProqhaError, first_line


def calibrate(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
              num_classes: int | None = None) -> None:
    """Initialise quantizer ranges that are not yet set from the first ``batch_size`` training samples
    (the same on every rank, so every rank starts from the same ranges). A model that cannot run on the
    data, or whose output is not ``(batch, num_classes)`` logits, is a ProqhaError."""
    from proqha.quant import Quantizer

    if all(q.initialized for q in model.modules() if isinstance(q, Quantizer) and q.enabled):
        return
    x = torch.stack([dataset[i][0] for i in range(min(batch_size, len(dataset)))]).to(device)
    label = dataset[0][1]
    spatial = tuple(label.shape) if isinstance(label, torch.Tensor) and label.dim() >= 2 else None
    forward_checked(model, x, num_classes, "the model cannot run on the data (input {shape})", spatial)


def forward_checked(model: nn.Module, x: torch.Tensor, num_classes: int | None, what: str,
                    spatial: tuple[int, ...] | None = None) -> None:
    """One training-mode forward without gradients (it sets quantizer ranges); ProqhaError ``what`` (with
    ``{shape}``) and the first line of the cause when the model cannot run on ``x``, or when its output
    is not (batch, num_classes) logits."""
    model.train()
    with torch.no_grad():
        try:
            out = model(x)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ProqhaError(f"{what.format(shape=tuple(x.shape))}: {first_line(exc)}") from exc
    check_logits(out, len(x), num_classes, spatial)


def check_logits(out: Any, batch: int, num_classes: int | None, spatial: tuple[int, ...] | None = None) -> None:
    """A classifier's output must be a ``(batch, num_classes)`` tensor; without ``num_classes`` (the Python
    API), or with the labels' ``spatial`` shape (segmentation masks), a dense prediction's ``(batch, classes,
    *spatial)`` is accepted too (ProqhaError otherwise; a dict or tuple of outputs gets one line saying how to
    pick one)."""
    if isinstance(out, dict) or (isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor)):
        keys = ", ".join(repr(k) for k in out) if isinstance(out, dict) else ", ".join(map(str, range(len(out))))
        first = next(iter(out)) if isinstance(out, dict) else 0
        raise ProqhaError(f"the model returns a {type(out).__name__} of outputs ({keys}); wrap it so it returns one "
                          f"tensor: proqha.OutputOf(model, {first!r})")
    if not isinstance(out, torch.Tensor):
        raise ProqhaError(f"the model returns {type(out).__name__}; expected a tensor of logits")
    dense_ok = out.dim() > 2 and (num_classes is None or (spatial is not None and tuple(out.shape[2:]) == spatial))
    if (out.dim() != 2 and not dense_ok) or out.shape[0] != batch or (
            num_classes is not None and out.shape[1] != num_classes):
        tail = "" if spatial is None else ", " + ", ".join(map(str, spatial))
        raise ProqhaError(f"the model's output has shape {tuple(out.shape)}; expected (batch, "
                          f"{num_classes if num_classes is not None else 'classes'}{tail}) = "
                          f"({batch}, {num_classes if num_classes is not None else '...'}{tail})")
