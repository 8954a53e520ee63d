"""`proqha quantize` through the real CLI: a user's own float model (a plain state dict trained here in plain
PyTorch on an image folder this test draws) quantized after training, then searched, exported, fine-tuned;
and every malformed input one error line, exit 2, nothing written."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import onnx
import pytest
import torch
import torchvision
from PIL import Image
from typer.testing import CliRunner

from proqha.cli.app import app
from proqha.files import read_jsonl

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _example():
    """examples/own_float_model.py, imported (it draws the folder and trains the float model)."""
    spec = importlib.util.spec_from_file_location("own_float_model", ROOT / "examples" / "own_float_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    """(image folder, state dict file, float val top-1): a torchvision ResNet-18 trained in plain PyTorch."""
    example = _example()
    root = tmp_path_factory.mktemp("own")
    example.draw_folder(root / "images")
    model, top1 = example.train_float(root / "images")
    torch.save(model.state_dict(), root / "model.pth")
    return root / "images", root / "model.pth", top1


def _ok(args: list[str]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_a_users_float_model_quantizes_searches_exports_and_fine_tunes(own_model, tmp_path, monkeypatch):
    folder, weights, float_top1 = own_model
    monkeypatch.chdir(tmp_path)
    done = _ok(["quantize", "--init", str(weights), "--arch", "resnet18", "--dataset", "imagefolder", "--data-dir",
                str(folder), "--image-size", "32", "--bits", "8"])
    assert "float" in done.stdout and "int8" in done.stdout and "top-1 drop" in done.stdout
    run = tmp_path / "runs" / "quantize-1"
    row = read_jsonl(run / "metrics.jsonl")[0]
    assert row["float_top1"] == pytest.approx(float_top1)  # proqha evaluates the user's model as they did
    assert abs(row["float_top1"] - row["test_top1"]) <= 1.0, row
    config = json.loads((run / "config.json").read_text())
    assert config["stage"] == "quantize" and config["class_names"] == ["circle", "cross", "square", "triangle"]

    _ok(["search", "--from", str(run), "--steps", "1", "--candidates", "2", "--finetune-epochs", "1",
         "--final-epochs", "0"])
    _ok(["export", "runs/search-1", "--out", "searched.onnx", "--samples", "32"])
    graph = onnx.load("searched.onnx")
    assert [d.dim_value for d in graph.graph.output[0].type.tensor_type.shape.dim][1:] == [4]
    names = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(names["class_names"]) == ["circle", "cross", "square", "triangle"]

    tuned = _ok(["train", "--init", str(run), "--epochs", "1", "--batch-size", "32", "--optimizer", "adam",
                 "--lr", "1e-4", "--run-dir", "tuned"])  # the architecture, head and data come with the run
    assert "training resnet18 on imagefolder" in tuned.output and "re-initialised" not in tuned.output
    assert json.loads((Path("tuned") / "config.json").read_text())["image_size"] == 32
    start = read_jsonl(Path("tuned") / "metrics.jsonl")[0]
    assert start["test_top1"] >= row["test_top1"] - 5.0  # fine-tuning starts from the calibrated ranges


def _folder(root: Path, classes=("a", "b", "c"), per_class: int = 4) -> Path:
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (20, 20), (40 * i, 80, 120)).save(root / split / name / f"{i}.png")
    return root


class _RunsCode:
    """Pickled, it would create a file when loaded (``weights_only=True`` must refuse it first)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _state(tmp_path: Path, arch: str = "resnet18", classes: int = 3) -> Path:
    path = tmp_path / f"{arch}.pth"
    torch.save(getattr(torchvision.models, arch)(weights=None, num_classes=classes).state_dict(), path)
    return path


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    data = _folder(tmp_path / "images")
    empty = _folder(tmp_path / "empty")
    (empty / "train" / "d").mkdir()
    stray = _folder(tmp_path / "stray")
    (stray / "train" / "a" / "notes.txt").write_text("not an image")
    pwned = tmp_path / "pwned"
    torch.save({"state_dict": _RunsCode(str(pwned))}, tmp_path / "evil.pth")
    good = _state(tmp_path)
    common = ["--arch", "resnet18", "--dataset", "imagefolder", "--image-size", "16"]
    return {
        "wrong architecture": (["--init", str(_state(tmp_path, "mobilenet_v2")), *common, "--data-dir", str(data)],
                               "does not fit resnet18"),
        "a pickle that runs code": (["--init", str(tmp_path / "evil.pth"), *common, "--data-dir", str(data)],
                                    "refused"),
        "an empty class folder": (["--init", str(good), *common, "--data-dir", str(empty)], "empty"),
        "a non-image file": (["--init", str(good), *common, "--data-dir", str(stray)], "notes.txt"),
        "a val split of 1.5": (["--init", str(good), *common, "--data-dir", str(data), "--val-split", "1.5"],
                               "--val-split must be in (0, 1)"),
        "no model": ([*common, "--data-dir", str(data)], "--init is needed"),
        "an unknown calibration method": (["--init", str(good), *common, "--data-dir", str(data),
                                           "--calib-method", "kl"], "--calib-method must be one of"),
        "a head of another size": (["--init", str(_state(tmp_path, classes=5)), *common, "--data-dir", str(data)],
                                   "re-initialised fc (the file's head has 5 classes, this model 3); post-training "
                                   "quantization does not train"),
    }


@pytest.mark.parametrize("case", ["wrong architecture", "a pickle that runs code", "an empty class folder",
                                  "a non-image file", "a val split of 1.5", "no model",
                                  "an unknown calibration method", "a head of another size"])
def test_malformed_input_is_one_line_exit_2_and_nothing_written(case, tmp_path, monkeypatch):
    args, message = _bad_inputs(tmp_path)[case]
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["quantize", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_quantizing_a_float_run_turns_every_quantizer_on_and_exports_exactly(tmp_path, monkeypatch):
    """A float train run's quantizers are all off (its adds too): quantizing it, or training from it, gives
    every quantizer the new run's bits, so the export runs every layer in int8."""
    from proqha.train import TrainConfig, train_run

    monkeypatch.chdir(tmp_path)
    train_run(TrainConfig(bits=32, epochs=1, batch_size=256).resolved(), tmp_path / "float")
    _ok(["quantize", str(tmp_path / "float"), "--calib-method", "minmax", "--calib-batches", "2"])
    row = read_jsonl(tmp_path / "runs" / "quantize-1" / "metrics.jsonl")[0]
    assert row["calib_images"] == 2 * 64 and row["float_top1"] > 20
    exported = _ok(["export", "runs/quantize-1", "--out", "q.onnx", "--samples", "64"])
    assert "wrote q.onnx" in exported.output


def test_a_truncated_image_is_one_error_line_naming_it(tmp_path, monkeypatch):
    """Its header opens (the up-front check passes) but its pixels end early: the read names the file."""
    data = _folder(tmp_path / "images")
    cut = data / "train" / "b" / "cut.png"
    Image.effect_noise((20, 20), 64).convert("RGB").save(cut)
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--arch", "resnet18", "--dataset", "imagefolder", "--data-dir", str(data),
                                 "--image-size", "16", "--epochs", "1", "--batch-size", "32"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot read image {cut}: ")
    assert not (tmp_path / "runs").exists()
