"""Helpers the API's stages share: where a model runs, input sizes, seeded stand-in batches, warnings."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
from torch import nn

from proqha.errors import ProqhaError

Batch = tuple[torch.Tensor, torch.Tensor]
InputSize = Sequence[int] | torch.Tensor


def model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def place(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """The device to run on: ``device`` (``auto`` picks CUDA when present) or where the model already is."""
    from proqha.devices import resolve_device

    if device is None:
        return model_device(model)
    target = resolve_device(device) if isinstance(device, str) else device
    model.to(target)
    return target


def input_shape(input_size: InputSize) -> tuple[int, ...]:
    """``(C, H, W)`` from a shape or from an example batch (its shape after the batch dimension)."""
    try:
        size = tuple(input_size.shape[1:]) if isinstance(input_size, torch.Tensor) else tuple(input_size)
    except TypeError:  # a single number
        size = ()
    if not size or not all(isinstance(v, int) and v > 0 for v in size):
        raise ProqhaError(f"input_size must be positive ints such as (channels, height, width), got {input_size!r}")
    return size


def warn_rows(row: dict[str, Any], lines: list[str], prefix: str) -> None:
    """Each line as a Python warning and under ``row["warnings"]``."""
    for line in lines:
        warnings.warn(prefix + line, stacklevel=3)
        row.setdefault("warnings", []).append(line)


def random_batches(size: tuple[int, ...], device: torch.device, n: int = 64) -> list[Batch]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(n, *size, generator=gen).to(device), torch.zeros(n, dtype=torch.long))]
