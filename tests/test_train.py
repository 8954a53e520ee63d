"""QAT training: run directory contents, deterministic resume, starting from a checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import torch

from proqha.checkpoint import load_checkpoint
from proqha.errors import ProqhaError
from proqha.files import read_jsonl
from proqha.quant import BitConfig, quant_layers
from proqha.recipe import load_model
from proqha.train import TrainConfig, train_run


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**({"epochs": 3, "batch_size": 128, "lr": 0.05} | kw)).resolved()


class _Killed(Exception):
    pass


def test_run_directory_holds_config_metrics_bits_and_checkpoints(tmp_path):
    result = train_run(_cfg(epochs=2), tmp_path / "run")
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["arch"] == "digits_resnet" and config["bits"] == 8 and config["epochs"] == 2
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "test_top1", "test_top5", "images_per_s"} <= set(rows[0])
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state.epoch == 2 and state.best_top1 == result["best_top1"]
    assert BitConfig.load(run / "bits.json").to_dict() == state.bits
    model, _ = load_model(run / "checkpoints" / "best.pt")
    assert all(layer.weight_quantizer.initialized for layer in quant_layers(model).values())
    assert not list(run.glob("**/*.tmp"))  # atomic writes leave no temp files


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    full = train_run(_cfg(), tmp_path / "full")

    def kill_after_first_epoch(row):
        if row["epoch"] == 1:
            raise _Killed

    with pytest.raises(_Killed):
        train_run(_cfg(), tmp_path / "cut", on_epoch=kill_after_first_epoch)
    assert len(read_jsonl(tmp_path / "cut" / "metrics.jsonl")) == 1
    epochs_run = []
    resumed = train_run(_cfg(), tmp_path / "cut", resume=True, on_epoch=lambda r: epochs_run.append(r["epoch"]))
    assert epochs_run == [2, 3]  # continues from the last completed epoch
    full_rows = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    cut_rows = read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    for a, b in zip(full_rows, cut_rows, strict=True):
        assert a["test_top1"] == b["test_top1"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    assert resumed["best_top1"] == full["best_top1"]
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt").model
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt").model
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))


def test_same_seed_same_result(tmp_path):
    r1 = train_run(_cfg(epochs=1), tmp_path / "a")
    r2 = train_run(_cfg(epochs=1), tmp_path / "b")
    assert r1["last"]["train_loss"] == r2["last"]["train_loss"]


def test_more_epochs_on_resume_stretch_the_schedule_and_fewer_are_refused(tmp_path):
    train_run(_cfg(epochs=2), tmp_path / "r")  # its cosine schedule ends at 0
    train_run(_cfg(epochs=3), tmp_path / "r", resume=True)
    rows = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[2]["lr"] == pytest.approx(0.05 * (1 + math.cos(2 * math.pi / 3)) / 2)  # as if planned for 3
    assert json.loads((tmp_path / "r" / "config.json").read_text())["epochs"] == 3  # a later resume keeps it
    with pytest.raises(ProqhaError, match="has already trained 3 epochs"):
        train_run(_cfg(epochs=1), tmp_path / "r", resume=True)


def test_float_training_then_qat_from_its_checkpoint(tmp_path):
    train_run(_cfg(epochs=1, bits=32), tmp_path / "float")
    float_state = load_checkpoint(tmp_path / "float" / "checkpoints" / "last.pt")
    assert set(float_state.bits["layer1.0.conv1"].values()) == {32}
    result = train_run(_cfg(epochs=1, bits=4, init=str(tmp_path / "float" / "checkpoints" / "last.pt")), tmp_path / "q")
    assert result["last"]["test_top1"] > 50
    bits = BitConfig.load(tmp_path / "q" / "bits.json")
    assert bits["layer1.0.conv1"] == {"w": 4, "a": 4} and bits["conv1"] == {"w": 8, "a": 8}


def test_bits_file_sets_mixed_precision(tmp_path):
    train_run(_cfg(epochs=1), tmp_path / "a")
    bits = BitConfig.load(tmp_path / "a" / "bits.json").to_dict()
    bits["layer2.0.conv1"] = {"w": 3, "a": 6}
    BitConfig(bits).save(tmp_path / "mixed.json")
    train_run(_cfg(epochs=1, bits_file=str(tmp_path / "mixed.json")), tmp_path / "b")
    assert BitConfig.load(tmp_path / "b" / "bits.json")["layer2.0.conv1"] == {"w": 3, "a": 6}


def test_init_from_another_architecture_is_refused(tmp_path):
    train_run(_cfg(epochs=1), tmp_path / "a")
    with pytest.raises(ProqhaError, match="does not fit resnet20"):
        train_run(_cfg(epochs=1, arch="resnet20", init=str(tmp_path / "a" / "checkpoints" / "last.pt")), tmp_path / "b")
    assert not (tmp_path / "b").exists()  # nothing written


class _Payload:
    def __reduce__(self):
        import pathlib
        return (pathlib.Path.touch, (pathlib.Path(_Payload.target),))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    _Payload.target = str(tmp_path / "pwned")
    torch.save({"model": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ProqhaError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_truncated_checkpoint_is_one_clear_error(tmp_path):
    train_run(_cfg(epochs=1), tmp_path / "a")
    data = (tmp_path / "a" / "checkpoints" / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ProqhaError, match="unreadable or truncated"):
        load_checkpoint(tmp_path / "cut.pt")


@pytest.mark.parametrize("kw, message", [
    ({"arch": "nope"}, "unknown architecture"),
    ({"bits": 9}, "bits must be an integer in 2..8 or 32"),
    ({"dataset": "nope"}, "unknown dataset"),
    ({"optimizer": "lbfgs"}, "^optimizer must be one of sgd, adam"),
    ({"epochs": 0}, "^epochs out of range"),
    ({"lr": -1.0}, "^lr out of range"),
])
def test_bad_config_rejected_before_work(kw, message):
    with pytest.raises(ProqhaError, match=message):
        TrainConfig(**kw).resolved()
