"""Weights from the files users have (``proqha.weights``): plain state dicts, training scripts' checkpoints,
DDP/compile prefixes, run folders, a head of another size; and ``proqha train --init`` reading them."""

from __future__ import annotations

import pathlib

import pytest
import torch
import torchvision
from typer.testing import CliRunner

import proqha
from proqha.checkpoint import Checkpoint, save_checkpoint
from proqha.cli.app import app
from proqha.errors import ProqhaError
from proqha.files import read_jsonl
from proqha.weights import load_weights, read_state_dict

runner = CliRunner()


def _resnet(classes: int = 10) -> torch.nn.Module:
    return torchvision.models.resnet18(num_classes=classes)


def _assert_loaded(model: torch.nn.Module, state: dict[str, torch.Tensor], skip: str = "\0") -> None:
    own = model.state_dict()
    for k, v in state.items():
        if not k.startswith(skip):
            assert torch.equal(own[k], v), k


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}},
    lambda sd: {"model": sd, "optimizer": {}, "epoch": 7},
    lambda sd: {"net": sd},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},
    lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},
    lambda sd: {"state_dict": {f"module._orig_mod.module.{k}": v for k, v in sd.items()}},
], ids=["plain", "state_dict", "model_state_dict", "model", "net", "ddp", "compiled", "nested-prefixes"])
def test_the_files_users_have_load(wrap, tmp_path):
    source = _resnet().state_dict()
    torch.save(wrap(source), tmp_path / "w.pth")
    assert set(read_state_dict(tmp_path / "w.pth")) == set(source)
    model = _resnet()
    assert load_weights(model, tmp_path / "w.pth") == []
    _assert_loaded(model, source)


def test_a_head_of_another_size_is_reinitialised_with_one_note(tmp_path):
    source = _resnet(1000).state_dict()
    torch.save(source, tmp_path / "imagenet.pth")
    model = _resnet(10)
    fresh = model.fc.weight.detach().clone()
    notes = load_weights(model, str(tmp_path / "imagenet.pth"), num_classes=10)
    assert notes == ["re-initialised fc (the file's head has 1000 classes, this model 10)"]
    _assert_loaded(model, source, skip="fc.")
    assert torch.equal(model.fc.weight, fresh)


def test_another_architecture_is_one_line_naming_a_key_and_leaves_the_model_alone(tmp_path):
    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "mobilenet.pth")
    model = _resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ProqhaError) as err:
        load_weights(model, tmp_path / "mobilenet.pth")
    message = str(err.value)
    assert "\n" not in message and "conv1.weight" in message and "features.0.0.weight" in message
    _assert_loaded(model, before)


def test_a_missing_key_is_refused_before_anything_is_loaded(tmp_path):
    state = _resnet().state_dict()
    del state["layer4.1.bn2.weight"]
    torch.save(state, tmp_path / "w.pth")
    model = _resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ProqhaError, match=r"missing layer4\.1\.bn2\.weight"):
        load_weights(model, tmp_path / "w.pth")
    _assert_loaded(model, before)


def test_a_misshaped_layer_that_is_not_the_head_is_refused(tmp_path):
    state = _resnet().state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(ProqhaError, match=r"layer1\.0\.conv1\.weight has shape 64x64x1x1 in the file"):
        load_weights(_resnet(), tmp_path / "w.pth")


class _Payload:
    """Unpickling this would create a file."""

    target = ""

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(_Payload.target),))


def test_a_file_that_would_run_code_is_refused_before_running_it(tmp_path):
    _Payload.target = str(tmp_path / "pwned")
    torch.save({"state_dict": {"fc.weight": _Payload()}}, tmp_path / "evil.pth")
    with pytest.raises(ProqhaError, match="refused") as err:
        load_weights(_resnet(), tmp_path / "evil.pth")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "pwned").exists()


def test_a_file_without_a_state_dict_is_one_line(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "w.pth")
    with pytest.raises(ProqhaError, match="holds no state dict") as err:
        read_state_dict(tmp_path / "w.pth")
    assert "\n" not in str(err.value)


def test_a_run_folder_and_a_proqha_checkpoint_load_into_the_quantized_twin(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    trained = proqha.quantize(_resnet(), x)
    trained(x)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    save_checkpoint(Checkpoint("search", trained.state_dict(), None, {}, step=1),
                    tmp_path / "run" / "checkpoints" / "last.pt")
    model = proqha.quantize(_resnet(), x)
    assert load_weights(model, tmp_path / "run") == []
    _assert_loaded(model, {k: v for k, v in trained.state_dict().items() if isinstance(v, torch.Tensor)})


def test_float_weights_load_into_the_quantized_twin_and_run(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    source = _resnet(1000).state_dict()
    torch.save({"model": source}, tmp_path / "w.pth")
    qmodel = proqha.quantize(_resnet(10), x)
    assert proqha.load_weights(qmodel, tmp_path / "w.pth", 10) == [
        "re-initialised fc (the file's head has 1000 classes, this model 10)"]
    assert torch.equal(qmodel.conv1.weight, source["conv1.weight"])
    assert torch.equal(qmodel.get_submodule("layer4.1.conv2").weight, source["layer4.1.conv2.weight"])
    assert torch.isfinite(qmodel(x)).all()


@pytest.mark.slow
@pytest.mark.parametrize("classes, note", [
    (10, None), (5, "re-initialised fc (the file's head has 5 classes, this model 10)")])
def test_cli_trains_from_a_plain_state_dict(classes, note, tmp_path):
    from proqha.models import create_model

    float_model = create_model("digits_resnet", num_classes=classes, in_channels=1)
    torch.save(float_model.state_dict(), tmp_path / "plain.pth")
    result = runner.invoke(app, ["train", "--arch", "digits_resnet", "--init", str(tmp_path / "plain.pth"),
                                 "--epochs", "1", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == 1
    lines = result.stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("training digits_resnet"))
    if note is None:
        assert "re-initialised" not in result.output
    else:
        assert lines[start + 1] == note, lines


def test_cli_bad_init_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "mobilenet.pth")
    result = runner.invoke(app, ["train", "--arch", "digits_resnet", "--init", "mobilenet.pth", "--run-dir", "run"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --init mobilenet.pth does not fit digits_resnet"), lines
    assert "conv1.weight" in lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_training_reports_a_reinitialised_head_as_a_note(tmp_path):
    from proqha.models import create_model
    from proqha.train import TrainConfig, prepare_model

    torch.save(create_model("digits_resnet", num_classes=5, in_channels=1).state_dict(), tmp_path / "five.pth")
    cfg = TrainConfig(arch="digits_resnet", init=str(tmp_path / "five.pth")).resolved()
    _, recipe, notes = prepare_model(cfg, torch.device("cpu"))
    assert recipe.num_classes == 10
    assert notes == ["re-initialised fc (the file's head has 5 classes, this model 10)"]
