"""Checkpoints: plain dicts (model, optimizer, scheduler, epoch, config, bits, model spec), written
atomically and read with ``torch.load(weights_only=True)`` so a file can never execute code."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from proqha.errors import ProqhaError, first_line
from proqha.files import atomic_torch_save


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write a checkpoint dict atomically."""
    atomic_torch_save(state, Path(path))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects; any problem is one ProqhaError line."""
    path = Path(path)
    if not path.is_file():
        raise ProqhaError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "refused"
        raise ProqhaError(f"checkpoint {path} was refused: it holds objects that are not plain data "
                          f"({first[:160]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ProqhaError(f"checkpoint {path} is unreadable or truncated ({first_line(exc)[:160]})") from None
    except Exception as exc:  # noqa: BLE001 - torch.load's unpickler raises anything on a file that is no checkpoint
        raise ProqhaError(f"{path} is not a PyTorch checkpoint ({type(exc).__name__}: {first_line(exc)[:120]})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ProqhaError(f"checkpoint {path} is not a proqha checkpoint (no 'model' entry)")
    return state
