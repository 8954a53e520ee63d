"""Weights from the files users have: a proqha checkpoint, a plain state dict, a training script's checkpoint
(the state dict under ``state_dict``, ``model_state_dict``, ``model`` or ``net``) or a run folder, with the
key prefixes of DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) stripped (``read_state_dict``); and
loading them into a float model or its quantized twin, a classifier head of another size re-initialised
(``load_weights``). Files are read with ``torch.load(weights_only=True)`` (``checkpoint.load_plain``): one
that would run code is refused."""

from __future__ import annotations

import copy
import itertools
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from proqha.checkpoint import Checkpoint, load_plain
from proqha.errors import ProqhaError, first_line
from proqha.quant.convert import load_float_state_dict
from proqha.runs import pick_checkpoint

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")  # where training scripts keep the weights
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile


class WeightsMismatch(ProqhaError):
    """The file's weights do not fit the model; ``detail`` names the first key that does not fit."""

    def __init__(self, source: str | Path, detail: str) -> None:
        super().__init__(f"{source} does not fit the model: {detail}")
        self.detail = detail


def read_checkpoint(source: str | Path) -> Checkpoint | None:
    """The proqha checkpoint ``source`` names (a checkpoint file, or a run folder's checkpoint as ``proqha
    export`` picks it), or None when it is another file (a plain or wrapped state dict)."""
    path = Path(source)
    if path.is_dir():
        path = pick_checkpoint(path).checkpoint
    loaded = load_plain(path)
    if isinstance(loaded, dict) and "format" in loaded and "kind" in loaded:
        return Checkpoint.from_dict(loaded, path)
    return None


def read_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``source``: a proqha checkpoint (its ``model``), a plain state dict, a dict holding one
    under ``state_dict``, ``model_state_dict``, ``model`` or ``net``, or a run folder (its checkpoint, as
    ``proqha export`` picks it); ``module.`` and ``_orig_mod.`` key prefixes stripped. A file that is none of
    these, or that would run code when unpickled, is one ProqhaError line."""
    path = Path(source)
    if path.is_dir():
        path = pick_checkpoint(path).checkpoint
    loaded = load_plain(path)
    if isinstance(loaded, dict) and "format" in loaded and "kind" in loaded:  # proqha's own: validate it
        state: Any = Checkpoint.from_dict(loaded, path).model
    elif _is_state_dict(loaded):
        state = loaded
    else:
        state = next((loaded[k] for k in STATE_DICT_KEYS
                      if isinstance(loaded, dict) and _is_state_dict(loaded.get(k))), None)
    if state is None:
        found = ", ".join(map(str, list(loaded)[:5])) if isinstance(loaded, dict) else type(loaded).__name__
        raise ProqhaError(f"{path} holds no state dict: expected tensors by name, or them under "
                          f"{', '.join(STATE_DICT_KEYS)} (found {found or 'an empty dict'})")
    return {_unwrapped(k): v for k, v in state.items()}


def _is_state_dict(value: Any) -> bool:
    """Tensors by name (a quantized model's ``_extra_state`` entries are plain data)."""
    return (isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and (isinstance(v, torch.Tensor) or k.endswith("_extra_state")) for k, v in value.items()))


def _unwrapped(key: str) -> str:
    """``key`` without the prefixes wrappers add, however many and in whatever order."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]  # each prefix is one dotted name
    return key


def classifier_head(model: nn.Module) -> str | None:
    """The module path of the model's classifier head: its last nn.Linear or nn.Conv2d (quantized ones too)."""
    names = [name for name, mod in model.named_modules() if isinstance(mod, (nn.Linear, nn.Conv2d))]
    return names[-1] if names else None


def load_weights(model: nn.Module, source: str | Path, num_classes: int | None = None) -> list[str]:
    """Load the weights in ``source`` into ``model``, a float model or proqha's quantized twin (whose quantizer
    ranges may be missing: they initialise on the next forward); returns notes, one line each.

    ``source``: a proqha checkpoint, a plain ``state_dict()`` file, a training script's checkpoint holding one
    under ``state_dict``, ``model_state_dict``, ``model`` or ``net``, or a run folder; ``module.`` (DDP) and
    ``_orig_mod.`` (torch.compile) prefixes are stripped. Files are read with ``weights_only=True``: one that
    would run code is refused. When only the classifier head's shapes differ (its last Linear or Conv2d;
    with ``num_classes``, only when that head has ``num_classes`` outputs) the head keeps its fresh
    initialisation and a note says so; any other mismatch is a ``WeightsMismatch`` naming the first key
    that does not fit, and the model is left untouched.
    """
    state = read_state_dict(source)
    own = model.state_dict()
    misshaped = [k for k, v in state.items()
                 if isinstance(v, torch.Tensor) and k in own and isinstance(own[k], torch.Tensor) and v.shape != own[k].shape]
    notes: list[str] = []
    head = classifier_head(model)
    if misshaped and head is not None and _is_head(model, head, num_classes) and all(
            k.startswith(head + ".") for k in misshaped):
        notes.append(_head_note(head, state, own, misshaped))
        mine = {k: v for k, v in own.items() if k.startswith(head + ".")}  # loaded back as they are
        state = {k: v for k, v in state.items() if not k.startswith(head + ".")} | mine
    elif misshaped:
        k = misshaped[0]
        raise WeightsMismatch(source, f"{k} has shape {_shape(state[k])} in the file, {_shape(own[k])} in the model")
    _check_fits(model, state, source)
    load_float_state_dict(model, state)
    return notes


def _is_head(model: nn.Module, head: str, num_classes: int | None) -> bool:
    """Whether ``head`` may be re-initialised: any last layer, or with ``num_classes`` one with that many outputs."""
    mod = model.get_submodule(head)
    outputs = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
    return num_classes is None or outputs == num_classes


def _head_note(head: str, state: Mapping[str, Any], own: Mapping[str, Any], misshaped: list[str]) -> str:
    """One line on the re-initialised head: its classes, or its shapes when more than the classes differ."""
    key = f"{head}.weight" if f"{head}.weight" in misshaped else misshaped[0]
    theirs, mine = state[key].shape, own[key].shape
    if key == f"{head}.weight" and theirs[1:] == mine[1:]:
        return f"re-initialised {head} (the file's head has {theirs[0]} classes, this model {mine[0]})"
    return f"re-initialised {head} (the file's {key} is {_shape(state[key])}, this model's {_shape(own[key])})"


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def _check_fits(model: nn.Module, state: Mapping[str, Any], source: str | Path) -> None:
    """Load ``state`` into a copy of ``model`` whose tensors are on the meta device (no memory, no copies): a
    file that does not fit fails here, before the model itself is touched."""
    memo: dict[int, Any] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    trial = copy.deepcopy(model, memo)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # copying into meta tensors is a no-op, which torch warns about
            load_float_state_dict(trial, dict(state))
    except (ValueError, RuntimeError) as exc:
        raise WeightsMismatch(source, first_line(exc).removeprefix("state dict does not match the model: ")) from None
