"""Nothing lost, nothing executed: kills and resumes, hostile files, bad input across the CLI, full disks.

Kill/resume rounds run the real console command in subprocesses and compare with an uninterrupted run
of the same seed; bad invocations go through the console entry point (`proqha.cli.app.main`).
"""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proqha.checkpoint import load_checkpoint
from proqha.cli.app import main
from proqha.errors import ProqhaError, first_line
from proqha.files import read_jsonl
from proqha.quant import BitConfig
from proqha.runs import run_lock
from proqha.train import TrainConfig, train_run

PROQHA = [sys.executable, "-m", "proqha"]
KILL_ROUNDS = 2
ONE_THREAD = os.environ | {"OMP_NUM_THREADS": "1"}  # the uninterrupted run and the killed one share the two cores


def _run_with_kills(first: list[str], resume: list[str], run_dir: Path, cwd: Path, seed: int) -> int:
    """Start, SIGKILL at random moments KILL_ROUNDS times (resuming each time), then finish. Returns kills."""
    rng = random.Random(seed)
    kills = 0
    for _ in range(KILL_ROUNDS):
        cmd = resume if (run_dir / "config.json").is_file() else first
        proc = subprocess.Popen(PROQHA + cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=ONE_THREAD)
        time.sleep(rng.uniform(3.0, 7.0))  # start-up is ~3 s: kills land in training, saving, or scoring
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    cmd = resume if (run_dir / "config.json").is_file() else first
    done = subprocess.run(PROQHA + cmd, cwd=cwd, capture_output=True, text=True, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    return kills


def _uninterrupted(args: list[str], cwd: Path) -> subprocess.Popen:
    """The reference run, started beside the killed one (one thread each, as the killed run has); its stderr
    goes to a file (a full pipe would stop it)."""
    with open(cwd / "ref.stderr", "w") as err:
        return subprocess.Popen(PROQHA + args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, env=ONE_THREAD)


def _finished(proc: subprocess.Popen, cwd: Path) -> None:
    assert proc.wait(timeout=600) == 0, (cwd / "ref.stderr").read_text()


def _state_equal(a: Path, b: Path) -> bool:
    sa, sb = load_checkpoint(a).model, load_checkpoint(b).model
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa if isinstance(sa[k], torch.Tensor))


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigkill_train_then_resume_equals_uninterrupted(tmp_path):
    args = ["train", "--epochs", "10", "--batch-size", "128", "--seed", "3"]
    ref = _uninterrupted(args + ["--run-dir", "ref"], tmp_path)
    kills = _run_with_kills(args + ["--run-dir", "cut"], ["train", "--resume", "--run-dir", "cut"],
                            tmp_path / "cut", tmp_path, seed=11)
    _finished(ref, tmp_path)
    a, b = read_jsonl(tmp_path / "ref" / "metrics.jsonl"), read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert [r["epoch"] for r in b] == list(range(1, 11))
    assert [(r["train_loss"], r["test_top1"]) for r in a] == [(r["train_loss"], r["test_top1"]) for r in b]
    assert _state_equal(tmp_path / "ref" / "checkpoints" / "last.pt", tmp_path / "cut" / "checkpoints" / "last.pt")
    assert kills >= 1
    print(f"train: {kills} SIGKILL/resume rounds, result identical")


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigkill_search_then_resume_equals_uninterrupted(tmp_path):
    train_run(TrainConfig(epochs=2, batch_size=128).resolved(), tmp_path / "train")
    args = ["search", "--from", "train", "--steps", "3", "--candidates", "8", "--finetune-epochs", "1", "--final-epochs", "0",
            "--batch-size", "128"]
    ref = _uninterrupted(args + ["--run-dir", "ref"], tmp_path)
    kills = _run_with_kills(args + ["--run-dir", "cut"], ["search", "--resume", "--run-dir", "cut"],
                            tmp_path / "cut", tmp_path, seed=int(os.environ.get("KSEED", "5")))
    _finished(ref, tmp_path)

    def rows(run):
        with open(tmp_path / run / "frontier.csv", newline="") as f:
            return [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(f)]

    assert rows("ref") == rows("cut") and len(rows("cut")) == 4
    assert _state_equal(tmp_path / "ref" / "checkpoints" / "step-003.pt", tmp_path / "cut" / "checkpoints" / "step-003.pt")
    print(f"search: {kills} SIGKILL/resume rounds, result identical")


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigint_stops_cleanly_with_the_resume_command(tmp_path):
    proc = subprocess.Popen(PROQHA + ["train", "--epochs", "200", "--run-dir", "r"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "r" / "checkpoints" / "last.pt").is_file() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith("error: interrupted")
    assert "proqha train --resume --run-dir r" in err
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt").epoch >= 1


def test_a_run_directory_in_use_is_refused(tmp_path):
    train_run(TrainConfig(epochs=1, batch_size=256).resolved(), tmp_path / "r")
    with run_lock(tmp_path / "r"):
        with pytest.raises(ProqhaError, match=f"in use \\(pid {os.getpid()}\\)"):
            train_run(TrainConfig(epochs=2, batch_size=256).resolved(), tmp_path / "r", resume=True)


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def failing_save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) > 2:  # epoch 1 writes best.pt and last.pt; epoch 2 hits a full disk
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(ProqhaError, match="No space left on device; the previous version is intact"):
        train_run(TrainConfig(epochs=3, batch_size=256).resolved(), tmp_path / "r")
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt").epoch == 1
    assert not list((tmp_path / "r").rglob("*.tmp"))


def test_non_finite_loss_stops_naming_epoch_batch_and_parameter(tmp_path):
    from proqha.checkpoint import save_checkpoint

    train_run(TrainConfig(epochs=1, batch_size=256).resolved(), tmp_path / "good")
    state = load_checkpoint(tmp_path / "good" / "checkpoints" / "last.pt")
    state.model["layer2.0.bn1.weight"][0] = float("nan")
    save_checkpoint(state, tmp_path / "poisoned.pt")
    with pytest.raises(ProqhaError, match=r"loss became nan at epoch 1, batch 0 \(parameter layer2.0.bn1.weight "
                                          r"is non-finite\)"):
        train_run(TrainConfig(epochs=2, batch_size=256, init=str(tmp_path / "poisoned.pt")).resolved(), tmp_path / "r")


# --- hostile files -----------------------------------------------------------------------------------

class _Payload:
    target = ""

    def __reduce__(self):
        import pathlib
        return (pathlib.Path.touch, (pathlib.Path(_Payload.target),))


@pytest.mark.parametrize("command", [["search", "--from"], ["export"], ["bench"], ["train", "--init"]])
def test_malicious_checkpoint_never_runs(tmp_path, monkeypatch, capsys, command):
    _Payload.target = str(tmp_path / "pwned")
    torch.save({"model": _Payload(), "recipe": {}}, tmp_path / "evil.pt")
    monkeypatch.chdir(tmp_path)
    code, err = _main([*command, str(tmp_path / "evil.pt")], monkeypatch, capsys)
    assert code == 2 and "refused" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "pwned").exists()


# --- bad input everywhere ----------------------------------------------------------------------------

def _run_main(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr stripped) of the console entry point."""
    monkeypatch.setattr(sys, "argv", ["proqha", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err.strip()


def _main(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    code, _, err = _run_main(args, monkeypatch, capsys)
    return code, err


@pytest.fixture(scope="module")
def runs(search_run):
    return search_run.parent


def _snapshot(*roots: Path) -> set[str]:
    return {str(p) for root in roots for p in root.rglob("*")}


BAD = [
    (["train", "--arch", "vgg99"], "unknown architecture 'vgg99'"),
    (["train", "--dataset", "imagenet22k"], "unknown dataset"),
    (["train", "--bits", "9"], "--bits must be an integer in 2..8 or 32"),
    (["train", "--bits", "1"], "--bits must be an integer in 2..8 or 32"),
    (["train", "--bits", "four"], "--bits"),
    (["train", "--epochs", "0"], "--epochs out of range"),
    (["train", "--batch-size", "-4"], "--batch-size out of range"),
    (["train", "--lr", "-0.1"], "--lr out of range"),
    (["train", "--lr", "nan"], "--lr out of range"),
    (["train", "--optimizer", "lbfgs"], "--optimizer"),
    (["train", "--weight-quantizer", "ternary"], "--weight-quantizer must be one of dorefa, lsq"),
    (["train", "--edge-layers", "fp16"], "--edge-layers must be one of int8, float, search"),
    (["train", "--dataset", "cifar10", "--data-dir", "nowhere"], "--data-dir not found: nowhere"),
    (["train", "--dataset", "cifar10", "--data-dir", "FILE"], "not a folder"),
    (["train", "--device", "cuda"], "CUDA is not available"),
    (["train", "--device", "tpu"], "--device must be"),
    (["train", "--bits-file", "FILE"], "not readable JSON"),
    (["train", "--run-dir", "RUNS/train-1"], "already exists"),
    (["train", "--run-dir", "FILE/run"], "is a file, not a folder"),
    (["train", "--dataset", "cifar10", "--download", "--data-dir", "OFFLINE"], "--download could not fetch 'cifar10'"),
    (["train", "--frobnicate"], "No such option"),
    (["search", "--from", "RUNS/train-1", "--lam", "-1"], "--lam must be >= 0"),
    (["search", "--from", "RUNS/train-1", "--ratio", "0"], "--ratio must be in (0, 1]"),
    (["search", "--from", "RUNS/train-1", "--ratio", "1.01"], "--ratio must be in (0, 1]"),
    (["search", "--from", "RUNS/train-1", "--interval", "3"], "--interval must be 1, 2 or 4"),
    (["search", "--from", "RUNS/train-1", "--min-bits", "1"], "--min-bits must be in 2..8"),
    (["search", "--from", "RUNS/train-1", "--candidates", "0"], "--candidates must be >= 1"),
    (["search", "--from", "RUNS/train-1", "--target-cost", "0"], "--target-cost must be > 0"),
    (["search", "--from", "RUNS/train-1", "--strategy", "allocate", "--target-size-mb", "1"], "spends a budget"),
    (["search", "--from", "nowhere"], "no such checkpoint or run directory"),
    (["search", "--resume", "--run-dir", "RUNS/train-1"], "is a train run, not a search run"),
    (["train", "--resume", "--run-dir", "RUNS/train-1", "--bits", "4"], "--bits cannot change them"),
    (["search", "--resume", "--run-dir", "RUNS/search-1", "--lam", "0.9"], "--lam cannot change them"),
    (["export", "RUNS/search-1", "--step", "42"], "--step 42"),
    (["export", "RUNS/search-1", "--format", "pdf"], "--format must be one of"),
    (["export", "RUNS/search-1", "--profile", "tpu"], "--profile must be one of"),
    (["export", "RUNS/search-1", "--step", "1", "--best-under-cost", "0.2"], "not both"),
    (["export", "RUNS/train-1", "--step", "1"], "is not a search run"),
    (["export", "RUNS/search-1", "--samples", "0"], "--samples must be >= 1"),
    (["parity", "nowhere.onnx"], "ONNX model not found"),
    (["parity", "FILE"], "not a valid ONNX"),
    (["bench", "RUNS/search-1", "--engine", "npu"], "--engine must be one of"),
    (["bench", "RUNS/search-1", "--batch", "1,0"], "--batch must be"),
    (["bench", "RUNS/search-1", "--iters", "0"], "--iters out of range"),
    (["bench", "RUNS/train-1", "--all-steps"], "--all-steps times every step of a search run"),
    (["bench", "RUNS/search-1", "--seconds", "-1"], "--seconds out of range"),
    (["report", "nowhere"], "run directory not found"),
    (["report", "RUNS/search-1", "--step", "77"], "--step 77"),
    (["cost", "--arch", "nope"], "unknown architecture"),
    (["cost", "--input-size", "3,224"], "--input-size must be 3 positive integers"),
    (["cost", "--num-classes", "0"], "--num-classes must be positive"),
    (["cost", "--bits-file", "nowhere.json"], "bit config file not found"),
    (["cost", "--bits-file", "RUNS/search-1/bits.json"], "(is --arch resnet18 the model"),
    (["pipeline", "--lam", "-2", "--epochs", "1"], "--lam must be >= 0"),
    (["pipeline", "--engine", "gpu", "--epochs", "1"], "--engine must be one of"),
    (["pipeline", "--dataset", "mnist"], "needs --data-dir"),
]


def _offline(*args, **kwargs):
    raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))


@pytest.mark.slow
@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a)[:50] for a, _ in BAD])
def test_bad_invocation_exits_2_with_one_line_and_writes_nothing(runs, tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / "file").write_text("not json, not a folder, not onnx")
    args = [a.replace("FILE", str(tmp_path / "file")).replace("RUNS", str(runs)) for a in args]
    if "OFFLINE" in args:  # a download without a network
        args = [str(tmp_path / "data") if a == "OFFLINE" else a for a in args]
        monkeypatch.setattr(urllib.request, "urlopen", _offline)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path, runs)
    code, err = _main(args, monkeypatch, capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert "Traceback" not in err
    assert _snapshot(tmp_path, runs) == before


def test_ctrl_c_names_a_resume_command_only_where_one_works(tmp_path, capsys):
    from proqha.cli.common import interrupted

    run = tmp_path / "r"
    progress = run / "checkpoints" / "last.pt"

    def said() -> str:
        assert interrupted("train", run, progress, "the last completed epoch is saved").exit_code == 130
        return capsys.readouterr().err.strip()

    assert said() == "error: interrupted before the run started; nothing was saved"  # no folder yet
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert said().startswith("error: interrupted before anything was saved; to start the run again: proqha train --resume")
    progress.parent.mkdir()
    progress.write_bytes(b"")
    assert said() == f"error: interrupted; the last completed epoch is saved: proqha train --resume --run-dir {run}"


def test_a_quoted_cause_keeps_the_line_its_first_line_introduces():
    cause = RuntimeError("Error(s) in loading state_dict for Net:\n\tsize mismatch for fc.weight: [10, 8] vs [10, 4].\n\tmore")
    assert first_line(cause) == "Error(s) in loading state_dict for Net: size mismatch for fc.weight: [10, 8] vs [10, 4]."
    assert first_line(ValueError("one line\nand more")) == "one line" and first_line(KeyError()) == "KeyError"


def test_a_refused_path_is_one_line_and_exit_2_other_os_errors_stay_bugs(capsys):
    import typer

    from proqha.cli.common import handle_errors

    @handle_errors
    def writes(code: int) -> None:
        raise OSError(code, os.strerror(code), "ro/run")

    with pytest.raises(typer.Exit) as exit_info:
        writes(errno.EROFS)
    assert exit_info.value.exit_code == 2
    assert capsys.readouterr().err.strip() == "error: ro/run: Read-only file system"
    with pytest.raises(OSError):
        writes(errno.EIO)  # not the user's to fix: the internal-error path, with its --debug hint


@pytest.mark.subprocess
def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    code, err = _main(["train", "--bits", "9"], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    debug = subprocess.run([sys.executable, "-m", "proqha", "--debug", "train", "--bits", "9"], capture_output=True,
                           text=True, cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr
    assert "proqha.errors.OptionError: bits must be" in debug.stderr  # the library's own error, as the API says it


# --- property tests ----------------------------------------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers(-40, 40) | st.floats(allow_nan=True) |
                           st.text(max_size=5), lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(data=st.dictionaries(st.sampled_from(["conv1", "fc", "layer1.0.conv1", "x"]),
                            st.dictionaries(st.sampled_from(["w", "a", "b"]), json_values, max_size=3) | json_values,
                            max_size=4) | json_values)
def test_property_random_bitconfig_json_is_accepted_or_one_clear_error(data):
    try:
        config = BitConfig(data)
    except ProqhaError as exc:
        assert "\n" not in str(exc)
        return
    for knobs in config.values():
        assert set(knobs) == {"w", "a"}
        assert all(type(b) is int and (2 <= b <= 8 or b == 32) for b in knobs.values())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bits=st.one_of(st.integers(-5, 40), st.sampled_from(["x", "4.5", "", "nan"])),
       size=st.one_of(st.sampled_from(["1,8,8", "1,16,16", "0,8,8", "1,8", "a,b,c", "1x8x8", "-1,8,8"])))
def test_property_random_cli_values_exit_0_or_2_with_one_line(bits, size, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run_main(["cost", "--arch", "digits_resnet", "--bits", str(bits), "--input-size", size,
                                "--json"], monkeypatch, capsys)
    valid_bits = str(bits) in {str(b) for b in (2, 3, 4, 5, 6, 7, 8, 32)}
    valid_size = size in ("1,8,8", "1,16,16", "1x8x8")
    assert code == (0 if valid_bits and valid_size else 2), err
    if code:
        assert len(err.splitlines()) == 1 and err.startswith("error: ")
    else:
        report = json.loads(out)
        assert report["totals"]["paper_cost"] == (1.0 if str(bits) == "32" else int(bits) / 32)
    assert list(tmp_path.iterdir()) == []


def test_written_files_follow_the_umask(tmp_path):
    import importlib

    import proqha.files

    mask = os.umask(0o022)
    try:
        importlib.reload(proqha.files)  # the mode is read once, at import
        proqha.files.atomic_write_bytes(tmp_path / "model.onnx", b"x")
    finally:
        os.umask(mask)
        importlib.reload(proqha.files)
    assert (tmp_path / "model.onnx").stat().st_mode & 0o777 == 0o644  # readable by a serving container


def test_export_on_the_wrong_input_size_is_one_line(capfd):
    from proqha.export.onnx_export import export_onnx
    from proqha.models import create_model
    from proqha.quant import QuantConfig, quantize_model

    model = quantize_model(create_model("digits_resnet"), QuantConfig(bits=8)).eval()
    with pytest.raises(ProqhaError, match=r"cannot run on input size \(3, 8, 8\)"):
        export_onnx(model, (3, 8, 8))
    assert "Traceback" not in capfd.readouterr().err  # fx's ShapeProp would print one
