"""proqha bench: latency statistics on real onnxruntime sessions, the report, and missing TensorRT."""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from proqha.cli.app import app
from proqha.deploy.bench import CSV_FIELDS
from proqha.deploy.latency import measure, stats_from
from proqha.deploy.runtime_ort import OrtRuntime
from proqha.export.onnx_export import export_onnx
from proqha.models import create_model
from proqha.quant import quantize_model

runner = CliRunner()
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def _ort_runtime():
    model = quantize_model(create_model("digits_resnet")).eval()
    model(torch.randn(8, 1, 8, 8))
    proto, _ = export_onnx(model, (1, 8, 8))
    return OrtRuntime(proto.SerializeToString(), threads=1)


def test_statistics_on_a_real_session_are_ordered():
    runtime = _ort_runtime()
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    stats = measure(runtime, x, warmup=2, iters=20)
    assert stats.runs == 20 and stats.batch == 4
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.throughput == pytest.approx(4 / (stats.median_ms / 1e3))
    timed = measure(runtime, x, warmup=0, iters=None, seconds=0.05)
    assert timed.runs >= 3


def test_stats_from_hand_values():
    s = stats_from([0.001, 0.002, 0.003, 0.004], batch=2)
    assert s.median_ms == pytest.approx(2.5) and s.min_ms == pytest.approx(1) and s.max_ms == pytest.approx(4)
    assert s.mean_ms == pytest.approx(2.5)


def test_bench_cli_table_json_csv_and_plots(search_run):
    result = runner.invoke(app, ["bench", str(search_run), "--engine", "ort", "--engine", "torch", "--batch", "1,4",
                                 "--iters", "5", "--warmup", "1", "--samples", "64", "--plot"])
    assert result.exit_code == 0, result.output
    for col in ("median ms", "p99 ms", "vs fp32", "paper cost", "GBitOPs", "file KB", "ort MB", "top-1 engine"):
        assert col in result.stdout
    data = json.loads((search_run / "bench" / "bench.json").read_text())
    assert set(data) == {"schema", "settings", "devices", "rows"} and data["schema"] == 1
    assert set(data["devices"]) == {"ort", "torch"}
    rows = data["rows"]
    assert {r["model"] for r in rows} == {"step 2", "fp32 twin", "step 0 (uniform 8)"}
    assert len(rows) == 3 * 2 * 2
    assert set(CSV_FIELDS) <= set(rows[0])
    for r in rows:
        assert r["median_ms"] > 0 and r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        if r["engine"] == "ort":  # the graph's file size, and onnxruntime's memory for its session
            assert r["file_bytes"] > 0 and r["ort_session_bytes"] > 0
        else:
            assert r["file_bytes"] is None and r["file_ratio_fp32"] is None and r["ort_session_bytes"] is None
        fp32 = next(f for f in rows if f["model"] == "fp32 twin" and (f["engine"], f["batch"]) == (r["engine"], r["batch"]))
        assert r["speedup_vs_fp32"] == pytest.approx(fp32["median_ms"] / r["median_ms"])  # against its own row
        if r["model"] == "fp32 twin":
            assert r["paper_cost"] == 1.0 and (r["engine"] != "ort" or r["file_ratio_fp32"] == 1.0)
        else:
            assert r["paper_cost"] < 1.0 and r["engine_top1"] == pytest.approx(r["torch_top1"], abs=2.0)
            assert r["engine"] != "ort" or 0 < r["file_ratio_fp32"] < 1
    with open(search_run / "bench" / "bench.csv", newline="") as f:
        assert next(csv.reader(f)) == CSV_FIELDS
    for png in ("latency_vs_bitops.png", "accuracy_vs_latency.png"):
        assert (search_run / "bench" / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT and a GPU are present: the missing-TensorRT path cannot run")
@pytest.mark.parametrize("args", [["bench", "--engine", "trt"], ["export", "--format", "trt"]])
def test_trt_without_tensorrt_is_one_line_exit_2(search_run, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in search_run.rglob("*"))
    result = runner.invoke(app, [args[0], str(search_run), *args[1:]])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install -e '.[trt]'" in lines[0]
    assert sorted(p.name for p in search_run.rglob("*")) == before


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT and an NVIDIA GPU (pip install -e '.[trt]')")
def test_trt_engine_builds_and_matches(search_run):
    result = runner.invoke(app, ["bench", str(search_run), "--engine", "trt", "--batch", "1", "--iters", "5"])
    assert result.exit_code == 0, result.output
    data = json.loads((search_run / "bench" / "bench.json").read_text())
    trt = [r for r in data["rows"] if r["engine"] == "trt"]
    assert trt and all(r["sanity_agreement"] >= 95.0 and r["median_ms"] > 0 for r in trt)
    layers = data["devices"]["trt"]["layers"]
    assert layers["int8_conv_gemm"] == layers["conv_gemm"] > 0  # the quantized step runs INT8 tactics


@pytest.mark.parametrize("args, message", [
    (["--engine", "tpu"], "--engine must be one of"),
    (["--batch", "0"], "--batch must be"),
    (["--batch", "a,b"], "--batch must be comma-separated integers"),
    (["--iters", "0"], "--iters out of range"),
    (["--step", "9"], "--step 9"),
])
def test_bench_bad_input(search_run, args, message):
    result = runner.invoke(app, ["bench", str(search_run), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_one_file_size_figure_the_written_files_bytes_in_export_bench_and_report(search_run, tmp_path):
    """export, bench and report --file-size give the size of the file proqha export writes, to the byte."""
    from proqha.deploy.report import measure_file_sizes
    from proqha.search.frontier import read_frontier

    out, fp32_out = tmp_path / "m.onnx", tmp_path / "f.onnx"
    for path, args in ((out, []), (fp32_out, ["--format", "onnx-fp32"])):
        result = runner.invoke(app, ["export", str(search_run), "--out", str(path), *args])
        assert result.exit_code == 0, result.output
        size = path.stat().st_size
        assert f"file {size / 1e3:.1f} KB: {size:,} bytes" in result.stderr
    result = runner.invoke(app, ["bench", str(search_run), "--iters", "1", "--warmup", "0", "--samples", "16",
                                 "--batch", "1", "--out-dir", str(tmp_path / "bench")])
    assert result.exit_code == 0, result.output
    rows = {r["model"]: r for r in json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]}
    assert rows["step 2"]["file_bytes"] == out.stat().st_size
    assert rows["fp32 twin"]["file_bytes"] == fp32_out.stat().st_size
    assert "fp32 twin: the model with every quantizer off" in result.stdout and "not the trained function" in result.stdout
    frontier = read_frontier(search_run)
    fp32, _ = measure_file_sizes(search_run, frontier, [])
    assert frontier[-1]["file_bytes"] == out.stat().st_size and fp32 == fp32_out.stat().st_size
