"""Wrappers that give a network one output tensor, the form proqha quantizes, searches and exports: one entry
of a dict or tuple (torchvision's segmentation models return ``{"out": ..., "aux": ...}``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class OutputOf(nn.Module):
    """``model`` returning only ``model(x)[key]`` (a dict key or a tuple index); its state dict is the
    model's under ``model.``."""

    def __init__(self, model: nn.Module, key: Any = "out") -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.key]
