"""Wrappers that give a network one output tensor, the form proqha quantizes, searches and exports: one entry
of a dict or tuple (``OutputOf``: torchvision's segmentation models return ``{"out": ..., "aux": ...}``), or a
one-stage detector's backbone and head without its box decoding (``DetectionHeads``)."""

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


HEAD_OUTPUTS = ("cls_logits", "bbox_regression", "bbox_ctrness")  # torchvision's detection head keys, in order


class DetectionHeads(nn.Module):
    """The part of a torchvision one-stage detector (RetinaNet, FCOS, SSD, SSDlite) that runs in int8: its
    backbone (with its feature pyramid) and its head, returning the head's raw outputs per anchor as one
    tensor (batch, K, anchors): K = classes class scores, then 4 box regressions (then FCOS's centerness).
    Left to your code, as every int8 exporter leaves them: the model's ``transform`` (normalise and resize the
    images before calling this), anchor generation (``model.anchor_generator``), box decoding
    (``model.box_coder``) and non-maximum suppression, on the transposed output ``out.transpose(1, 2)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        features = list(features.values()) if isinstance(features, dict) else [features]
        out = self.head(features)
        return torch.cat([out[k] for k in HEAD_OUTPUTS if k in out], dim=2).transpose(1, 2)
