"""The checkpoint schema: what is written, what old files map to, and one line for what does not fit."""

from __future__ import annotations

import os

import pytest
import torch

from proqha.checkpoint import CHECKPOINT_FORMAT, Checkpoint, load_checkpoint, save_checkpoint
from proqha.errors import ProqhaError

MODEL = {"w": torch.ones(2)}
RECIPE = {"arch": "digits_resnet", "input_size": [1, 8, 8]}


def _train(**over):
    return Checkpoint("train", MODEL, RECIPE, {"conv": {"w": 8, "a": 8}}, {"dataset": "digits"}, {"epoch": 1},
                      {"epochs": 2}, {"state": {}}, {"last_epoch": 1}, 1, 90.0) if not over else \
        Checkpoint(**(_train().to_dict() | over))


def test_a_checkpoint_round_trips_with_its_version(tmp_path):
    save_checkpoint(_train(), tmp_path / "a.pt")
    raw = torch.load(tmp_path / "a.pt", weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT and raw["kind"] == "train"
    back = load_checkpoint(tmp_path / "a.pt")
    assert back.epoch == 1 and back.dataset == "digits" and back.input_size == (1, 8, 8)
    assert torch.equal(back.model["w"], MODEL["w"])


@pytest.mark.parametrize("old, kind, dataset", [
    ({"model": MODEL, "recipe": RECIPE, "bits": {}, "optimizer": {}, "scheduler": {}, "epoch": 3, "best_top1": 1.0,
      "config": {"dataset": "mnist", "data_dir": "d", "epochs": 3}, "metrics": {}}, "train", "mnist"),
    ({"model": MODEL, "recipe": RECIPE, "bits": {}, "step": 2, "search": {"lam": 0.1}, "metrics": {},
      "config": {"dataset": "cifar10", "data_dir": None, "download": False}}, "search", "cifar10"),
])
def test_files_from_before_the_schema_are_read(old, kind, dataset, tmp_path):
    torch.save(old, tmp_path / "old.pt")
    ckpt = load_checkpoint(tmp_path / "old.pt")
    assert ckpt.kind == kind and ckpt.dataset == dataset and ckpt.format == CHECKPOINT_FORMAT
    assert ckpt.config == ({"lam": 0.1} if kind == "search" else old["config"])  # the run's own config


@pytest.mark.parametrize("change, message", [
    ({"format": CHECKPOINT_FORMAT + 1}, "reads formats up to"),
    ({"kind": "export"}, "has kind 'export'"),
    ({"optimizer": None}, "(train) lacks optimizer"),
])
def test_a_checkpoint_that_does_not_fit_is_one_line(change, message, tmp_path):
    torch.save(_train().to_dict() | change, tmp_path / "bad.pt")
    with pytest.raises(ProqhaError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        load_checkpoint(tmp_path / "bad.pt")
    assert "\n" not in str(err.value)


class _RunsCode:
    """Unpickling this would call os.system."""

    def __reduce__(self):
        return (os.system, ("true",))


def test_a_checkpoint_that_would_run_code_is_refused_naming_what_it_imports(tmp_path):
    torch.save({"model": _RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(ProqhaError) as info:
        load_checkpoint(tmp_path / "evil.pt")
    message = str(info.value)
    assert f"would import {os.system.__module__}.system" in message
    assert "\x1b" not in message and len(message) < 200
