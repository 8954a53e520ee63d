"""Checkpoints: one typed, versioned schema (``Checkpoint``) for every writer and reader, stored as plain
data, written atomically and read with ``torch.load(weights_only=True)`` so a file can never execute code.
Files written before the schema had a version are read too (``Checkpoint.from_dict``). ``load_plain`` is the
safe read itself, shared with the readers of other files (``proqha.weights``)."""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from proqha.errors import ProqhaError, first_line
from proqha.files import atomic_torch_save

CHECKPOINT_FORMAT = 1
KINDS = ("train", "search", "quantize")
_REQUIRED = {"train": ("model", "recipe", "bits", "optimizer", "scheduler", "epoch"), "search": ("model", "bits", "step"),
             "quantize": ("model", "recipe", "bits")}


@dataclass
class Checkpoint:
    """What a checkpoint holds. ``kind``: "train" (an epoch of training), "search" (a step of a search) or
    "quantize" (a post-training quantization).

    model: the state dict; recipe: how to rebuild the model (``ModelRecipe.to_dict()``; None for a search
    of a Python-API model); bits: per-layer bits; data: where the data came from
    (``proqha.data.DataSource.to_dict()``: ``dataset``, ``data_dir``, ``download``, ``image_size``,
    ``val_split``, and ``class_names`` where the dataset names them); metrics: the epoch's or step's row
    (a quantize run's: float and quantized test figures); config: the run's options as a dict. Train only: optimizer, scheduler, epoch, best_top1. Search only: step.
    ``format``: the schema version, ``CHECKPOINT_FORMAT`` when written.
    """

    kind: str
    model: dict[str, Any]
    recipe: dict[str, Any] | None
    bits: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    epoch: int | None = None
    best_top1: float | None = None
    step: int | None = None
    format: int = CHECKPOINT_FORMAT

    @property
    def input_size(self) -> tuple[int, ...]:
        """The model's input size (C, H, W) from its recipe."""
        if self.recipe is None:
            raise ProqhaError("this checkpoint has no model recipe (a search of a Python-API model)")
        return tuple(self.recipe["input_size"])

    @property
    def dataset(self) -> str:
        return self.data.get("dataset", "digits")

    def to_dict(self) -> dict[str, Any]:
        """The plain-data form that is saved (no copies of the tensors)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, state: Any, path: Path | str = "checkpoint") -> "Checkpoint":
        """Validate a loaded dict (one ProqhaError line when it does not fit); files without ``format``
        (written before the schema) are mapped onto it."""
        if not isinstance(state, dict) or "model" not in state:
            raise ProqhaError(f"checkpoint {path} is not a proqha checkpoint (no 'model' entry)")
        if "format" not in state:
            state = _unversioned(state, path)
        if not isinstance(state["format"], int) or state["format"] > CHECKPOINT_FORMAT:
            raise ProqhaError(f"checkpoint {path} has format {state['format']!r}; this proqha reads formats up to "
                              f"{CHECKPOINT_FORMAT} (written by a newer proqha?)")
        kind = state.get("kind")
        if kind not in KINDS:
            raise ProqhaError(f"checkpoint {path} has kind {kind!r}; expected one of {', '.join(KINDS)}")
        missing = [k for k in _REQUIRED[kind] if state.get(k) is None]
        if missing:
            raise ProqhaError(f"checkpoint {path} ({kind}) lacks {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in known})


def _unversioned(state: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """A checkpoint written before ``format`` existed, in today's schema: train ones kept the whole
    TrainConfig under "config", search ones their data options there and the SearchConfig under "search"."""
    config = state.get("config") or {}
    data = {k: config.get(k) for k in ("dataset", "data_dir", "download") if k in config}
    if "optimizer" in state:
        return state | {"format": 1, "kind": "train", "data": data}
    if "step" in state:
        return state | {"format": 1, "kind": "search", "data": data, "config": state.get("search") or {}}
    raise ProqhaError(f"checkpoint {path} is neither a training nor a search checkpoint")


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    """Write a checkpoint atomically."""
    atomic_torch_save(checkpoint.to_dict(), Path(path))


ZIP_MAGIC, PICKLE_PROTO = b"PK\x03\x04", b"\x80"  # how torch.save's files begin (zip; legacy pickle)


def _refusal(message: str) -> str:
    """What torch.load(weights_only=True) refused, in a few words (its message is a paragraph of advice)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", message)  # terminal colour codes
    named = re.search(r"unsupported global:? (?:GLOBAL )?([\w.]+)", text, re.IGNORECASE)
    if named:
        return f"it would import {named.group(1)}"
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    return detail.group(1).strip()[:160] if detail else "classes or code beyond tensors and numbers"


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and validate a checkpoint without unpickling arbitrary objects; any problem is one ProqhaError
    line."""
    path = Path(path)
    return Checkpoint.from_dict(load_plain(path, map_location), path)


def load_plain(path: Path | str, map_location: str | torch.device = "cpu") -> Any:
    """What a ``torch.save`` file holds, read with ``torch.load(weights_only=True)``: tensors and plain data
    only, so the file can never run code. A missing, foreign, code-running or truncated file is one
    ProqhaError line."""
    path = Path(path)
    if not path.is_file():
        raise ProqhaError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:4] != ZIP_MAGIC and head[:1] != PICKLE_PROTO:
        raise ProqhaError(f"{path} is not a PyTorch checkpoint (torch.save writes a zip archive; this file is not one)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing or reading
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ProqhaError(f"checkpoint {path} was refused, not plain data ({_refusal(str(exc))}); save "
                          "weights with torch.save(model.state_dict(), path)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ProqhaError(f"checkpoint {path} is unreadable or truncated ({first_line(exc)[:160]})") from None
    except Exception as exc:  # noqa: BLE001 - torch.load's unpickler raises anything on a file that is no checkpoint
        raise ProqhaError(f"{path} is not a PyTorch checkpoint ({type(exc).__name__}: {first_line(exc)[:120]})") from None
    return state
