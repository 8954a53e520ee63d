"""Which torch device a run uses: ``resolve_device`` turns an option value (``auto``, ``cpu``, ``cuda``,
``cuda:N``) into a ``torch.device``, refusing one this machine lacks."""

from __future__ import annotations

import torch

from proqha.errors import OptionError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; a name torch does not know, or CUDA without it, is an
    ``OptionError`` on ``device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError("device", f"must be {DEVICE_CHOICES}, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("device", f"{name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise OptionError("device", f"must be {DEVICE_CHOICES}, got {name!r}")
    return device
