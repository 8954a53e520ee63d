"""proqha bench: latency statistics on real onnxruntime and OpenVINO sessions, the quantize_static anchor, the
report, and missing TensorRT or OpenVINO."""

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
from proqha.deploy.latency import measure, measure_interleaved, stats_from
from proqha.deploy.ort_anchor import ANCHOR_LABEL
from proqha.deploy.runtime_ort import OrtRuntime
from proqha.export.onnx_export import export_onnx
from proqha.models import create_model
from proqha.quant import quantize_model

runner = CliRunner()
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None


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


class _DriftingRuntime:
    """A runtime whose call takes ``cost`` times a machine speed that slows with every call on the machine."""

    def __init__(self, cost: float, machine: list[int]) -> None:
        self.cost, self.machine = cost, machine

    def timed_run(self, x):
        self.machine[0] += 1
        return x, self.cost * (1 + 0.005 * self.machine[0])


def test_interleaved_timing_keeps_ratios_fair_on_a_drifting_machine():
    x = np.zeros((2, 1), np.float32)
    machine = [0]
    one_after_other = [measure(_DriftingRuntime(1e-3, machine), x, warmup=1, iters=40) for _ in range(2)]
    assert one_after_other[1].median_ms / one_after_other[0].median_ms > 1.1  # the later one looks slower
    machine = [0]
    a, b, c = measure_interleaved([_DriftingRuntime(1e-3, machine), _DriftingRuntime(1e-3, machine),
                                   _DriftingRuntime(2e-3, machine)], x, warmup=1, iters=40)
    assert a.runs == b.runs == c.runs == 40
    assert b.median_ms / a.median_ms == pytest.approx(1, abs=0.05)
    assert c.median_ms / a.median_ms == pytest.approx(2, abs=0.1)
    timed = measure_interleaved([_DriftingRuntime(1e-3, [0])] * 2, x, warmup=0, iters=None, seconds=0.001)
    assert all(t.runs >= 3 for t in timed)


class _SpellRuntime:
    """A call of ``cost`` seconds, ``slow`` times longer during calls ``spell`` (counted on a shared machine)."""

    def __init__(self, cost: float, machine: list[int], spell: range, slow: float = 3.0) -> None:
        self.cost, self.machine, self.spell, self.slow = cost, machine, spell, slow

    def timed_run(self, x):
        self.machine[0] += 1
        return x, self.cost * (self.slow if self.machine[0] in self.spell else 1.0)


def test_the_least_block_median_leaves_a_slow_spell_out():
    from proqha.deploy.latency import least_block_medians

    x = np.zeros((1, 1), np.float32)
    machine = [0]
    spell = range(1, 60)  # the first block (2 x (5 warm-up + 20 calls) = 50 calls) runs slow throughout
    fast, slow = _SpellRuntime(1e-3, machine, spell), _SpellRuntime(2e-3, machine, spell)
    assert least_block_medians([fast, slow], x, blocks=3, warmup=5, iters=20) == pytest.approx([1.0, 2.0])
    machine[0] = 0
    first_block = least_block_medians([fast, slow], x, blocks=1, warmup=5, iters=20)
    assert first_block == pytest.approx([3.0, 6.0])  # one block alone takes the spell's figures


def test_stats_from_hand_values():
    s = stats_from([0.001, 0.002, 0.003, 0.004], batch=2)
    assert s.median_ms == pytest.approx(2.5) and s.min_ms == pytest.approx(1) and s.max_ms == pytest.approx(4)
    assert s.mean_ms == pytest.approx(2.5)


@pytest.mark.slow
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
    assert {r["model"] for r in rows} == {"step 2", "fp32 twin", "step 0 (uniform 8)", ANCHOR_LABEL}
    assert len(rows) == 3 * 2 * 2 + 2  # onnxruntime's quantize_static runs on onnxruntime only
    assert set(CSV_FIELDS) <= set(rows[0])
    assert "vs qs" in result.stdout and "vs qs: latency as a ratio to its row" in " ".join(result.stdout.split())
    for r in rows:
        anchor = next((a for a in rows if a["anchor"] and (a["engine"], a["batch"]) == (r["engine"], r["batch"])), None)
        assert (anchor is None) == (r["engine"] == "torch")
        assert r["vs_anchor"] == (None if anchor is None else pytest.approx(r["median_ms"] / anchor["median_ms"]))
        if r["anchor"]:  # every conv/linear at 8 bit, the fp32 twin's graph quantized by onnxruntime
            assert r["paper_cost"] == 0.25 and r["quantized"] and r["file_bytes"] > 0
            assert r["sanity_agreement"] >= 90.0 and r["engine_top1"] > 80.0
            continue
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


@pytest.mark.slow
def test_no_anchor_leaves_the_quantize_static_row_out(search_run, tmp_path):
    result = runner.invoke(app, ["bench", str(search_run), "--batch", "1", "--iters", "1", "--warmup", "0",
                                 "--samples", "16", "--no-anchor", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert ANCHOR_LABEL not in {r["model"] for r in rows} and all(r["vs_anchor"] is None for r in rows)
    assert "vs qs" not in result.stdout


@pytest.mark.slow
def test_a_model_quantize_static_cannot_take_keeps_its_rows_and_warns_once(search_run, tmp_path, monkeypatch):
    import proqha.deploy.ort_anchor as ort_anchor

    def refuse(*args, **kwargs):
        raise RuntimeError("shape inference failed\nat node 7")

    monkeypatch.setattr(ort_anchor, "quantize_static_graph", refuse)
    result = runner.invoke(app, ["bench", str(search_run), "--batch", "1", "--iters", "1", "--warmup", "0",
                                 "--samples", "16", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warned == [f"warning: no {ANCHOR_LABEL} row: onnxruntime's quantize_static cannot quantize this model "
                      "(RuntimeError: shape inference failed)"]
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"step 2", "fp32 twin", "step 0 (uniform 8)"}


def test_the_anchor_calibrates_on_the_calibration_split():
    from types import SimpleNamespace

    from proqha.data import checkpoint_calibration_images, load_dataset

    calib, train = load_dataset("digits", "calib"), load_dataset("digits", "train")
    images = checkpoint_calibration_images(SimpleNamespace(data={"dataset": "digits"}), 8)
    assert torch.equal(images, torch.stack([calib[i][0] for i in range(8)]))
    assert not any(torch.equal(images[0], train[i][0]) for i in range(len(train)))  # held out of training


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_OPENVINO, reason="needs OpenVINO (pip install -e '.[openvino]')")
def test_openvino_engine_times_the_same_files_with_the_anchor(search_run, tmp_path):
    result = runner.invoke(app, ["bench", str(search_run), "--engine", "ort", "--engine", "openvino", "--batch", "1",
                                 "--iters", "2", "--warmup", "1", "--samples", "64", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["devices"]["openvino"]["engine"] == "openvino"
    ov = {r["model"]: r for r in data["rows"] if r["engine"] == "openvino"}
    ort = {r["model"]: r for r in data["rows"] if r["engine"] == "ort"}
    assert set(ov) == set(ort) and ANCHOR_LABEL in ov  # every graph, the anchor too, on both engines
    for model, r in ov.items():
        assert r["file_bytes"] == ort[model]["file_bytes"]  # the same file
        assert r["vs_anchor"] == pytest.approx(r["median_ms"] / ov[ANCHOR_LABEL]["median_ms"])
        if not r["anchor"]:
            assert r["sanity_agreement"] >= 95.0 and r["engine_top1"] == pytest.approx(r["torch_top1"], abs=3.0)


@pytest.mark.slow
def test_openvino_missing_is_one_line_exit_2_before_any_work(search_run, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    result = runner.invoke(app, ["bench", str(search_run), "--engine", "openvino", "--out-dir", str(tmp_path / "b")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'proqha[openvino]'" in lines[0]
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_one_file_size_figure_the_written_files_bytes_in_export_bench_and_report(search_run, tmp_path):
    """export, bench and report --file-size give the size of the file proqha export writes, to the byte."""
    from proqha.deploy.search_plots import measure_file_sizes
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
