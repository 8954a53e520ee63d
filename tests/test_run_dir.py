"""The run folder as one object (``proqha.runs.RunDir``), the one run-to-checkpoint function
(``pick_checkpoint``, both its uses) and the CLI's flag names for library options."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from proqha.cli.common import handle_errors
from proqha.errors import OptionError, ProqhaError
from proqha.runs import RunDir, pick_checkpoint


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_run_dir_names_every_file(tmp_path):
    run = RunDir(tmp_path / "search-1")
    assert run.config == tmp_path / "search-1" / "config.json" and run.metrics.name == "metrics.jsonl"
    assert run.last == tmp_path / "search-1" / "checkpoints" / "last.pt" and run.best.name == "best.pt"
    assert run.step_checkpoint(3).name == "step-003.pt" and run.step_bits(3).name == "bits-step003.json"
    assert (run.bits.name, run.frontier.name, run.export.name, run.bench.name) == \
        ("bits.json", "frontier.csv", "export", "bench")
    assert not run.path.exists()  # naming creates nothing
    for step in (10, 2, 0):
        _touch(run.step_checkpoint(step))
    _touch(run.checkpoints / "step-x.pt")
    assert [s for s, _ in run.step_checkpoints()] == [0, 2, 10]
    run.write_config({"stage": "search"})
    assert run.config.read_text().strip().startswith("{")
    with run.lock():
        assert (run.path / ".lock").is_file()


def test_where_a_search_starts(tmp_path):
    train, search, empty = RunDir(tmp_path / "t"), RunDir(tmp_path / "s"), tmp_path / "e"
    _touch(train.last)
    for step in (0, 1):
        _touch(search.step_checkpoint(step))  # no frontier.csv: a search killed before logging a step
    empty.mkdir()
    assert pick_checkpoint(train.path, start_option="from").checkpoint == train.last
    assert pick_checkpoint(search.path, start_option="from") == (search.step_checkpoint(1), search.path, 1)
    with pytest.raises(OptionError, match="the run has no checkpoint yet") as info:
        pick_checkpoint(empty, start_option="from")
    assert info.value.with_flag() == f"--from {empty}: the run has no checkpoint yet"
    with pytest.raises(OptionError, match="no such checkpoint or run directory"):
        pick_checkpoint(tmp_path / "nowhere", start_option="from")


def test_what_a_later_stage_reads(tmp_path):
    train, ckpt = RunDir(tmp_path / "t"), _touch(tmp_path / "m.pt")
    _touch(train.last)
    assert pick_checkpoint(train.path) == (train.last, train.path, None)
    assert pick_checkpoint(ckpt) == (ckpt, tmp_path, None)
    with pytest.raises(OptionError, match="is not a search run"):
        pick_checkpoint(train.path, step=1)
    with pytest.raises(OptionError, match="^best_under_cost needs a search run directory"):
        pick_checkpoint(ckpt, best_under_cost=0.2)
    with pytest.raises(ProqhaError, match="RUN not found"):
        pick_checkpoint(tmp_path / "nowhere")
    with pytest.raises(ProqhaError, match=r"has no checkpoint \(checkpoints/last.pt\)"):
        pick_checkpoint((tmp_path / "e").mkdir() or tmp_path / "e")


def test_the_cli_prints_an_option_error_with_the_commands_flag():
    app = typer.Typer()

    @app.command()
    @handle_errors(flags={"engines": "--engine"})
    def cmd(which: str) -> None:
        raise OptionError(which, "must be one of ort, openvino")

    runner = CliRunner()
    assert runner.invoke(app, ["engines"]).stderr.strip() == "error: --engine must be one of ort, openvino"
    assert runner.invoke(app, ["out_dir"]).stderr.strip() == "error: --out-dir must be one of ort, openvino"
