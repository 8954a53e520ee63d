"""Training options declared once: the CLI's flags, `proqha.fit`'s defaults and every check read
TrainConfig's declarations, and the library names options as the Python API spells them."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

import proqha
from proqha.cli.app import app
from proqha.errors import OptionError
from proqha.options import declared, default
from proqha.train_config import API_FIT_EPOCHS, API_FIT_OPTIMIZER, API_FIT_WEIGHT_DECAY, TrainConfig


def _cli_options() -> dict[str, object]:
    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    return {p.name: p for p in command.params}


def test_every_cli_field_is_a_flag_with_its_declared_help_and_default():
    cli = _cli_options()
    for f in dataclasses.fields(TrainConfig):
        decl = declared(TrainConfig, f.name)
        assert decl.help, f.name
        if not decl.cli:
            assert f.name not in cli
            continue
        option = cli[f.name]
        if f.name == "epochs":  # None on the command line: a resumed run keeps its own unless given
            assert option.default is None and f"Default {default(TrainConfig, 'epochs')};" in option.help
            continue
        assert option.help == decl.help, f.name
        assert option.default == default(TrainConfig, f.name), f.name


@pytest.mark.parametrize("kw, option, message", [
    ({"epochs": 0}, "epochs", "epochs out of range: must be >= 1, got 0"),
    ({"batch_size": 0}, "batch_size", "batch_size out of range: must be >= 1, got 0"),
    ({"lr": float("inf")}, "lr", "lr out of range: must be > 0, got inf"),
    ({"weight_decay": -1.0}, "weight_decay", "weight_decay out of range: must be >= 0, got -1.0"),
    ({"workers": -1}, "workers", "workers out of range: must be >= 0, got -1"),
    ({"amp": "fp8"}, "amp", "amp must be one of none, bf16, fp16, got 'fp8'"),
    ({"device": "tpu", "amp": "fp16"}, "device", "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
])
def test_a_bad_value_names_the_option_as_the_api_spells_it(kw, option, message):
    with pytest.raises(OptionError) as info:
        TrainConfig(**kw).resolved()
    assert info.value.option == option and str(info.value) == message


def test_the_cli_prints_the_same_error_with_the_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "--batch-size", "0"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --batch-size out of range: must be >= 1, got 0"


def test_fit_defaults_are_the_api_constants_and_its_checks_the_declarations():
    params = inspect.signature(proqha.fit).parameters
    assert (params["epochs"].default, params["optimizer"].default, params["weight_decay"].default) == \
        (API_FIT_EPOCHS, API_FIT_OPTIMIZER, API_FIT_WEIGHT_DECAY)
    model = proqha.quantize(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), torch.randn(8, 1, 2, 2))
    batches = [(torch.randn(8, 1, 2, 2), torch.zeros(8, dtype=torch.long))]
    for kw, message in [({"epochs": 0}, "epochs out of range: must be >= 1, got 0"),
                        ({"lr": -1.0}, "lr out of range: must be > 0, got -1.0"),
                        ({"optimizer": "lion"}, "optimizer must be one of sgd, adam or a torch optimizer, got 'lion'")]:
        with pytest.raises(OptionError) as info:
            proqha.fit(model, batches, **kw)
        assert str(info.value) == message
