"""The real CLI: `proqha train` end to end, resume, and bad input (exit 2, one line, nothing written)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from proqha.cli.app import app
from proqha.files import read_jsonl

runner = CliRunner()


@pytest.mark.slow
def test_default_train_reaches_95_percent_on_digits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 0, result.output
    rows = read_jsonl(tmp_path / "runs" / "train-1" / "metrics.jsonl")
    assert len(rows) == 15
    assert rows[-1]["test_top1"] >= 95.0
    assert "proqha train" in result.stdout and "test top-1" in result.stdout


def test_cli_resume_continues_the_latest_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = runner.invoke(app, ["train", "--epochs", "1", "--batch-size", "256"])
    assert first.exit_code == 0, first.output
    row1 = read_jsonl(tmp_path / "runs" / "train-1" / "metrics.jsonl")[0]
    again = runner.invoke(app, ["train", "--resume", "--epochs", "2"])
    assert again.exit_code == 0, again.output
    rows = read_jsonl(tmp_path / "runs" / "train-1" / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0] == row1
    assert not (tmp_path / "runs" / "train-2").exists()
    # a second plain run gets the next number
    second = runner.invoke(app, ["train", "--epochs", "1", "--batch-size", "256"])
    assert second.exit_code == 0 and (tmp_path / "runs" / "train-2" / "checkpoints" / "last.pt").is_file()


BAD = [
    (["train", "--arch", "nope"], "unknown architecture 'nope'"),
    (["train", "--bits", "9"], "--bits must be an integer in 2..8 or 32"),
    (["train", "--dataset", "cifar10", "--data-dir", "missing-dir"], "--data-dir not found: missing-dir"),
    (["train", "--dataset", "cifar10"], "needs --data-dir"),
    (["train", "--bits-file", "nope.json"], "bit config file not found"),
    (["train", "--init", "nope.pt"], "checkpoint not found"),
    (["train", "--resume"], "no train run found"),
    (["train", "--device", "cuda:0"], "CUDA is not available"),
    (["train", "--epochs", "0"], "--epochs out of range"),
    (["cost", "--arch", "nope"], "unknown architecture"),
    (["cost", "--bits", "1"], "bits must be an integer in 2..8 or 32"),
    (["cost", "--input-size", "3,abc"], "--input-size must be comma-separated integers"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []


def test_existing_run_dir_is_not_overwritten(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["train", "--run-dir", str(run)])
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert [p.name for p in run.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("args, message", [
    (["train", "--bits", "4.5"], "--bits"),
    (["train", "--no-such-option"], "No such option"),
])
@pytest.mark.subprocess
def test_console_script_usage_errors_are_one_line(args, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "proqha", *args], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, name", [(b"hello\n", "x.pt"), (b"step,cost\n", "frontier.csv"),
                                           (b'{"epoch": 1}\n', "metrics.jsonl"), (b"\x08\x09\x12\x07pytorch", "model.onnx")])
def test_a_file_that_is_no_checkpoint_is_one_line_exit_2(content, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(content)
    result = runner.invoke(app, ["export", name])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {name} is not a PyTorch checkpoint (")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.subprocess
def test_torchvision_is_imported_only_by_what_uses_it():
    """The CLI, and converting a model torchvision has nothing to do with, leave torchvision unimported (it
    takes seconds); a torchvision model imports it when built."""
    code = ("import sys; import proqha.cli.app; from proqha.models import create_model; "
            "from proqha.quant import QuantConfig, quantize_model; "
            "quantize_model(create_model('resnet20_post'), QuantConfig(bits=8)); print('torchvision' in sys.modules); "
            "create_model('resnet18', num_classes=10); print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"], out.stdout + out.stderr


@pytest.mark.subprocess
def test_the_cli_app_and_its_help_load_neither_torch_nor_onnx():
    """`proqha --help` (and every command's) must answer at once: torch, onnx and onnxruntime load only
    inside the commands that run them (importing torch alone took 3.7 s warm, 9.9 s cold)."""
    import subprocess
    import sys

    code = ("import sys, proqha.cli.app\n"
            "from typer.testing import CliRunner\n"
            "runner = CliRunner()\n"
            "for args in [['--help']] + [[name, '--help'] for name in ('train', 'search', 'report', 'export', "
            "'parity', 'bench', 'pipeline', 'cost')]:\n"
            "    result = runner.invoke(proqha.cli.app.app, args)\n"
            "    assert result.exit_code == 0, (args, result.output)\n"
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'matplotlib') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", ["export", "bench"])
def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(command, search_run, tmp_path):
    """A file where a folder of the output path must go: one line naming it, before parity or timing."""
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    option = ["--out", str(blocker / "model.onnx")] if command == "export" else ["--out-dir", str(blocker / "bench")]
    result = runner.invoke(app, [command, str(search_run), *option, "--iters", "1"][: 4 if command == "export" else 6])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"error: {option[0]} {option[1]}: {blocker} is a file, not a folder"]
    assert "parity" not in result.output and "timing" not in result.output


def test_resuming_a_run_saved_before_the_grid_options_keeps_its_grids(tmp_path):
    import json

    from proqha.cli.common import resume_config
    from proqha.quant.grid import LEGACY_QUANT
    from proqha.train import TrainConfig

    old = {k: v for k, v in TrainConfig(epochs=1).resolved().to_dict().items() if k not in LEGACY_QUANT}
    (tmp_path / "config.json").write_text(json.dumps(old | {"stage": "train"}))
    cfg, _ = resume_config("train", TrainConfig, tmp_path)
    assert {k: cfg.quant_options()[k] for k in LEGACY_QUANT} == LEGACY_QUANT
    new = TrainConfig(epochs=1).resolved().to_dict()
    (tmp_path / "config.json").write_text(json.dumps(new | {"stage": "train"}))
    assert resume_config("train", TrainConfig, tmp_path)[0].quant_options()["share_grids"] is True
