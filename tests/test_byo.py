"""Bring your own model and data: the Python API on a user's module, and the CLI on import paths."""

from __future__ import annotations

import copy
import csv
import importlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from typer.testing import CliRunner

import proqha
from proqha.cli.app import app
from proqha.files import read_jsonl
from proqha.quant import BitConfig, QuantConv2d

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

USER_MODULE = '''
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import proqha


class Net(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def make_net(num_classes, in_channels):
    return Net(num_classes, in_channels)


def images(n, seed, classes=4, size=(1, 8, 8)):
    templates = torch.randn(classes, *size, generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(classes, (n,), generator=gen)
    return TensorDataset(templates[y] + 0.8 * torch.randn(n, *size, generator=gen), y)


def make_data():
    return proqha.DataSplits(train=images(640, 1), test=images(256, 2), num_classes=4)


def not_a_model(num_classes):
    return 42


def three_outputs():
    return Net(3, 1)


def wrong_data():
    return [1, 2]


def wrong_shape():
    return {"train": images(64, 1), "test": images(64, 2), "num_classes": 4, "input_size": (3, 8, 8)}


def bad_labels():
    return proqha.DataSplits(images(64, 1), images(64, 2), num_classes=2)


def raising():
    raise ValueError("no data here")


def late_bad_tensor_label():  # past the first 32 samples the shape check reads
    train = images(640, 1)
    train.tensors[1][600] = 4
    return proqha.DataSplits(train, images(256, 2), num_classes=4)


class Listed(torch.utils.data.Dataset):  # a map-style dataset without a label tensor
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return x, int(y)


def late_bad_listed_label():
    train = images(640, 1)
    train.tensors[1][600] = 4
    return proqha.DataSplits(Listed(train), images(256, 2), num_classes=4, calib=images(64, 3))
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A fresh module (unique name) in tmp_path, which becomes the working directory."""
    name = f"byo_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the resolver adds the working directory
    yield name
    sys.modules.pop(name, None)


def _ok(args: list[str]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


def test_cli_runs_every_stage_on_an_import_path_model_and_dataset(user_module, tmp_path):
    arch, data = f"{user_module}:make_net", f"{user_module}:make_data"
    _ok(["train", "--arch", arch, "--dataset", data, "--epochs", "1", "--batch-size", "64"])
    train = tmp_path / "runs" / "train-1"
    config = json.loads((train / "config.json").read_text())
    assert config["arch"] == arch and config["dataset"] == data and config["recipe"]["arch"] == arch
    assert config["recipe"]["input_size"] == [1, 8, 8] and config["recipe"]["num_classes"] == 4
    _ok(["train", "--resume", "--epochs", "2"])  # rebuilt from the recorded import paths
    assert [r["epoch"] for r in read_jsonl(train / "metrics.jsonl")] == [1, 2]
    _ok(["search", "--steps", "2", "--candidates", "2", "--finetune-epochs", "1", "--final-epochs", "0"])
    search = tmp_path / "runs" / "search-1"
    with open(search / "frontier.csv") as f:
        bitops = [float(r["bitops"]) for r in csv.DictReader(f)]
    assert len(bitops) == 3 and bitops[2] < bitops[1] < bitops[0]
    _ok(["report"])
    _ok(["export"])
    assert (search / "export" / "model-step002.onnx").is_file()
    _ok(["bench", "--iters", "3", "--batch", "1", "--warmup", "1", "--samples", "64"])
    rows = json.loads((search / "bench" / "bench.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"step 2", "fp32 twin", "step 0 (uniform 8)", "ort quantize_static"}


BAD = [
    (["--arch", "nosuchmodule_xyz:make_net"], "no module named 'nosuchmodule_xyz'"),
    (["--arch", "{mod}:missing"], "has no attribute 'missing'"),
    (["--arch", "{mod}:not_a_model"], "returned int, not a torch.nn.Module"),
    (["--arch", "{mod}:three_outputs"], "output has shape"),
    (["--arch", "{mod}:make_net:x"], "not an import path"),
    (["--dataset", "{mod}:wrong_data"], "returned list"),
    (["--dataset", "{mod}:wrong_shape"], "images have shape (1, 8, 8), expected input_size (3, 8, 8)"),
    (["--dataset", "{mod}:bad_labels"], "labels must be class indices in 0..1"),
    (["--dataset", "{mod}:raising"], "raised ValueError: no data here"),
    (["--dataset", "{mod}:late_bad_tensor_label"], "got 4 at train[600]"),
    (["--dataset", "{mod}:make_data", "--arch", None], "has no default architecture; pass --arch"),
    (["--arch", "{mod}:make_net", "--dataset", "{broken}:make_data"], "importing '{broken}' failed: boom"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_import_paths_exit_2_with_one_line_and_write_nothing(args, message, user_module, tmp_path):
    broken = user_module + "_broken"
    (tmp_path / f"{broken}.py").write_text("raise RuntimeError('boom')\n")
    options = {"--arch": f"{user_module}:make_net", "--dataset": f"{user_module}:make_data"}
    for key, value in zip(args[::2], args[1::2]):
        options[key] = None if value is None else value.format(mod=user_module, broken=broken)
    argv = ["train", "--epochs", "1"] + [a for k, v in options.items() if v is not None for a in (k, v)]
    try:
        result = runner.invoke(app, argv)
    finally:
        sys.modules.pop(broken, None)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()  # not stripped: a blank line before the error is a second line
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message.format(broken=broken) in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()


def test_a_bad_label_found_mid_run_is_one_line_naming_the_sample_and_leaves_no_run(user_module, tmp_path):
    result = runner.invoke(app, ["train", "--arch", f"{user_module}:make_net", "--dataset",
                                 f"{user_module}:late_bad_listed_label", "--epochs", "1"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert lines and "label 4 at sample 600 of the training data" in lines[-1], result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs" / "train-1").exists()  # no run without a checkpoint for `search` to pick


def _user(name: str):
    """The user module, imported directly (the fixture restores sys.path)."""
    sys.path.insert(0, str(Path.cwd()))
    return importlib.import_module(name)


def _api_data(user_module: str):
    mod = _user(user_module)
    train, test = mod.images(640, 1), mod.images(256, 2)
    return mod, (DataLoader(train, batch_size=64, shuffle=True), DataLoader(mod.images(128, 3), batch_size=128),
                 DataLoader(test, batch_size=128))


def test_python_api_on_a_user_model(user_module, tmp_path, monkeypatch):
    mod, (train, calib, test) = _api_data(user_module)
    torch.manual_seed(0)
    net = mod.make_net(4, 1)
    qmodel = proqha.quantize(net, next(iter(train))[0], bits=8)
    assert isinstance(qmodel.conv2, QuantConv2d) and not isinstance(net.conv2, QuantConv2d)
    calls = []

    def loss(logits, y):
        calls.append(1)
        return nn.functional.cross_entropy(logits, y)

    rows = proqha.fit(qmodel, train, test, epochs=2, lr=3e-3, loss=loss)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["test_top1"] >= 80.0 and len(calls) >= 20
    start = copy.deepcopy(qmodel)

    result = proqha.search_bits(qmodel, train, calib, test, steps=2, candidates=2, finetune_epochs=1, final_epochs=0,
                                run_dir=tmp_path / "search")
    bitops = [s["bitops"] for s in result.steps]
    assert [s["step"] for s in result.steps] == [0, 1, 2] and bitops[2] < bitops[1] < bitops[0]
    assert result.model is qmodel and result.stopped == "steps"
    last = result.steps[-1]["bits"]
    assert last == BitConfig.from_model(qmodel).to_dict()
    assert any(b["w"] < 8 or b["a"] < 8 for b in last.values())
    assert (tmp_path / "search" / "frontier.csv").is_file() and (tmp_path / "search" / "checkpoints" / "step-002.pt").is_file()
    again = proqha.search_bits(start, train, calib, test, steps=2, candidates=2, finetune_epochs=1,
                               final_epochs=0)
    assert [s["bits"] for s in again.steps] == [s["bits"] for s in result.steps]  # same seed, same search

    out = tmp_path / "out" / "model.onnx"
    report = proqha.export_onnx(qmodel, out, (1, 8, 8), test)
    assert report.ok and out.is_file() and out.with_name("model.parity.json").is_file()
    assert report.parity[0].samples == 256 and report.parity[0].agreement_ties >= 99.5

    rows = proqha.bench(qmodel, (1, 8, 8), batches=(1,), iters=3, warmup=1, test_data=test)
    assert {r["model"] for r in rows} == {"model", "fp32 twin", "ort quantize_static"}
    assert all(r["median_ms"] > 0 for r in rows) and rows[0]["engine_top1"] is not None
    anchor = next(r for r in rows if r["anchor"])
    assert rows[0]["vs_anchor"] == pytest.approx(rows[0]["median_ms"] / anchor["median_ms"])
    assert {r["model"] for r in proqha.bench(qmodel, (1, 8, 8), batches=(1,), iters=1, warmup=0, test_data=test,
                                             anchor=False)} == {"model", "fp32 twin"}
    file_rows = proqha.bench(out, (1, 8, 8), batches=(1, 4), iters=3, warmup=1)
    assert [r["batch"] for r in file_rows] == [1, 4]


def test_api_export_writes_nothing_when_validation_fails(user_module, tmp_path, monkeypatch):
    from proqha.export import validate

    mod, (train, _, test) = _api_data(user_module)
    qmodel = proqha.quantize(mod.make_net(4, 1), next(iter(train))[0])
    real = validate.validate_export

    def failing(*args, **kwargs):
        report = real(*args, **kwargs)
        report.failures.append("made to fail")
        return report

    monkeypatch.setattr(validate, "validate_export", failing)
    with pytest.raises(proqha.ExportError, match="made to fail") as info:
        proqha.export_onnx(qmodel, tmp_path / "m.onnx", next(iter(test))[0], test)
    assert info.value.report.failures == ["made to fail"]
    assert list(tmp_path.glob("m*")) == []


@pytest.mark.parametrize("quantized, call, message", [
    (False, lambda m, x: proqha.quantize(m, x.repeat(1, 3, 1, 1)), "cannot run on example_input"),
    (False, lambda m, x: proqha.quantize(m, x, bits=9), "bits"),
    (False, lambda m, x: proqha.quantize(m, x, nope=1), "nope"),
    (True, lambda m, x: proqha.search_bits(m, [(x, torch.zeros(len(x), dtype=torch.long))], criterion="acc"),
     "pass calib_loader"),
    (True, lambda m, x: proqha.search_bits(m, [(x, torch.zeros(len(x), dtype=torch.long))], target_cost=0.1),
     "the budget allocation measures losses on calibration data; pass calib_loader"),
    (True, lambda m, x: proqha.search_bits(m, [(x, torch.zeros(len(x), dtype=torch.long))], batch_size=3),
     "unknown option 'batch_size'"),
    (True, lambda m, x: proqha.fit(m, [(x, torch.zeros(len(x), dtype=torch.long))], optimizer="rmsprop"),
     "optimizer must be one of"),
    (True, lambda m, x: proqha.fit(m, [(x, torch.full((len(x),), 9, dtype=torch.long))]),
     "labels must be class indices below the model's number of outputs"),
    (True, lambda m, x: proqha.export_onnx(m, "m.onnx", 16, [(x, torch.zeros(len(x), dtype=torch.long))]),
     "input_size must be positive ints"),
])
def test_api_bad_arguments_raise_one_line_proqha_errors(quantized, call, message, user_module):
    mod = _user(user_module)
    x = mod.images(16, 1).tensors[0]
    model = mod.make_net(4, 1)
    if quantized:
        model = proqha.quantize(model, x)
    with pytest.raises(proqha.ProqhaError, match=message) as info:
        call(model, x)
    assert "\n" not in str(info.value)


@pytest.mark.subprocess
def test_import_proqha_stays_light():
    code = "import sys, proqha; print(proqha.ProqhaError.__name__, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ProqhaError", "False"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_example_runs_end_to_end(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "bring_your_own_model.py"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "model.onnx").is_file() and (tmp_path / "out" / "model.parity.json").is_file()
    assert "parity onnxruntime: top-1 agreement" in done.stdout and "bench" in done.stdout


def test_a_model_never_quantized_is_told_to_call_quantize_first(user_module):
    mod = _user(user_module)
    net = mod.make_net(4, 1)
    batch = [(mod.images(16, 1).tensors[0], torch.zeros(16, dtype=torch.long))]
    with pytest.raises(proqha.ProqhaError, match=r"export: Net is not quantized; call proqha.quantize"):
        proqha.export_onnx(net, "m.onnx", (1, 8, 8), batch)
    with pytest.raises(proqha.ProqhaError, match=r"search_bits: Net is not quantized; call proqha.quantize"):
        proqha.search_bits(net, batch, batch, steps=1)


def test_an_architecture_written_with_a_dot_for_the_colon_gets_the_import_path_form():
    from proqha.models import get_model_spec

    with pytest.raises(proqha.ProqhaError, match=r"module:factory, my_pkg.models:make_net"):
        get_model_spec("my_pkg.models.make_net")


@pytest.mark.parametrize("call", ["evaluate", "fit"])
def test_batches_the_model_cannot_take_are_one_error_line(call):
    """Three-channel batches for a one-channel model: a ProqhaError naming the batches' shape, not PyTorch's
    RuntimeError (quantize and export already said so; evaluate and fit raised the raw error)."""
    import proqha
    from proqha.errors import ProqhaError

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    qmodel = proqha.quantize(net, torch.randn(4, 1, 8, 8), bits=8)
    bad = [(torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(ProqhaError, match=r"cannot run on the (test|training) data's batches \(inputs of shape "
                                          r"\(4, 3, 8, 8\)\): Given groups=1"):
        proqha.evaluate(qmodel, bad) if call == "evaluate" else proqha.fit(qmodel, bad, epochs=1)
