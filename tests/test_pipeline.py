"""proqha pipeline: train -> search -> export -> bench in one command."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from proqha.cli.app import app


@pytest.mark.slow
def test_pipeline_ends_with_the_latency_cost_accuracy_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["pipeline", "--epochs", "3", "--steps", "2", "--batch", "1,8", "--iters", "5"])
    assert result.exit_code == 0, result.output
    search = tmp_path / "runs" / "search-1"
    assert (tmp_path / "runs" / "train-1" / "checkpoints" / "last.pt").is_file()
    assert (search / "export" / "model-step002.onnx").is_file()
    rows = json.loads((search / "bench" / "bench.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"step 2", "fp32 twin", "step 0 (uniform 8)", "ort quantize_static"}
    assert all(r["engine"] == "ort" and r["median_ms"] > 0 for r in rows)
    tail = result.stdout[result.stdout.rindex("proqha bench"):]
    for col in ("median ms", "vs fp32", "paper cost", "GBitOPs", "file KB", "ort MB", "top-1 engine"):
        assert col in tail
    # which layers hurt, on the pipeline's run (its searched step, the latest run)
    measured = CliRunner().invoke(app, ["sensitivity", "--bits", "4,2", "--samples", "128", "--top", "3"])
    assert measured.exit_code == 0, measured.output
    assert "sensitivity: runs/search-1, step 2" in measured.stdout
    assert (search / "sensitivity.csv").is_file() and (search / "sensitivity.png").is_file()


def test_a_missing_tensorrt_stops_the_pipeline_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without it: import fails
    result = CliRunner().invoke(app, ["pipeline", "--engine", "trt"])
    assert result.exit_code == 2 and "TensorRT is not installed" in result.stderr
    assert not (tmp_path / "runs").exists()
