"""onnxruntime accuracy parity tests: exported QDQ graphs compute what the PyTorch model computes.

Real onnxruntime sessions and the ONNX reference evaluator, on the digits model and on a CIFAR-shape
ResNet with random weights, at uniform 8, 4 and 2 bit and at mixed 2..8-bit configs (LSQ and DoReFa).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
import torch
from helpers import configure_bits, random_cifar
from torch.utils.data import DataLoader, Subset
from typer.testing import CliRunner

from proqha.cli.app import app
from proqha.data import checkpoint_calibration_images, load_dataset
from proqha.deploy.ort_anchor import quantize_static_graph
from proqha.export.layer_parity import per_layer_steps
from proqha.export.onnx_export import export_onnx
from proqha.export.pair_sums import check_pair_sums, cpu_int8_path
from proqha.export.validate import kernel_weights, ort_kernels, validate_export
from proqha.quant import quant_layers
from proqha.recipe import load_model
from proqha.train import TrainConfig, train_run

runner = CliRunner()


@pytest.fixture(scope="module")
def digits_model(digits_run):
    return digits_run / "checkpoints" / "last.pt"


def _digits_batches(n=256):
    return DataLoader(Subset(load_dataset("digits", "test"), range(n)), batch_size=64)


def _assert_exact(report, info):
    assert report.ok, report.failures
    k = report.kernels
    assert k.integer_layers == len(info.layers) and k.float_layers == 0  # every conv/linear in int8
    assert k.integer_adds == info.quant_adds and k.float_adds == 0
    ort_parity, ref_parity = report.parity
    # random-weight logits often tie on the 8-bit output grid: a pick within one step of the best is a tie
    assert ort_parity.agreement_ties >= 99.5 and ort_parity.within_2_steps >= 99.0
    assert ref_parity.agreement_ties >= 99.9
    assert ort_parity.agreement >= 95.0


@pytest.mark.slow
@pytest.mark.parametrize("config", ["8", "4", "2", "mixed"])
def test_digits_export_runs_in_int8_and_matches_pytorch(digits_model, config):
    model, _ = load_model(digits_model)
    configure_bits(model, config)
    proto, info = export_onnx(model, (1, 8, 8))
    _assert_exact(validate_export(proto, info, model, _digits_batches()), info)


@pytest.mark.slow
def test_a_trained_uniform_8_bit_graph_runs_the_kernels_quantize_static_runs(digits_model):
    # each tensor is quantized once: a conv reading a residual add's output shares its grid, so onnxruntime
    # runs the integer kernels and nothing else (the one input QuantizeLinear, the one output Dequantize)
    model, state = load_model(digits_model)
    proto, info = export_onnx(model, (1, 8, 8))
    ops = ort_kernels(proto.SerializeToString()).ops
    assert ops.get("Clip", 0) == 0 and ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1
    assert set(ops) <= {"QLinearConv", "QLinearAdd", "QGemm", "QLinearGlobalAveragePool", "QuantizeLinear",
                        "DequantizeLinear", "Transpose", "Reshape"}, ops
    anchor = quantize_static_graph(export_onnx(model, (1, 8, 8), quantized=False)[0].SerializeToString(),
                                   checkpoint_calibration_images(state, 32).numpy())
    assert ops == ort_kernels(anchor).ops  # the same kernels, node for node


# A random deep net is chaotic end to end: one-step float ties between PyTorch and a runtime grow to several
# output steps (measured: onnxruntime and onnx.reference agreeing with each other at 100% top-1 and both up to
# 6 steps from PyTorch, DoReFa at 4 bit on a VNNI CPU). So random weights are checked per layer, each layer
# fed onnxruntime's own input (``helpers.per_layer_steps``); end to end, on the trained digits models.
@pytest.mark.parametrize("weights, config", [("lsq", "8"), ("lsq", "4"), ("lsq", "2"), ("lsq", "mixed"),
                                             ("dorefa", "4"), ("dorefa", "2"), ("dorefa", "mixed")])
def test_cifar_shape_random_weights_every_layer_exact_in_int8(weights, config):
    model, batches = random_cifar(weights)
    configure_bits(model, config)
    proto, info = export_onnx(model, (3, 32, 32))
    assert check_pair_sums(proto) == []
    kernels = ort_kernels(proto.SerializeToString())
    assert kernels.integer_layers == len(info.layers) and kernels.float_layers == 0
    assert kernels.integer_adds == info.quant_adds and kernels.float_adds == 0
    steps = per_layer_steps(model, proto, next(iter(batches))[0])
    assert len(steps) >= len(info.layers)  # every layer's input (or the grid it shares) and every add
    worst = max(steps, key=steps.get)
    assert steps[worst] <= 1 + 1e-4, f"{worst}: {steps[worst]:.2f} output steps from PyTorch"


def test_per_layer_parity_finds_the_saturating_layers_of_an_int16_cpu():
    # the full 8-bit grid with int8 weights everywhere ("vnni" form) saturates where int8 sums are int16:
    # per layer, the first conv is tens of steps off there, and exact where they are int32
    sums = cpu_int8_path().sums
    if sums == "unknown":
        pytest.skip("this CPU's flags do not say how its int8 kernels add products")
    model, batches = random_cifar("lsq", int8_kernels="vnni")
    proto, _ = export_onnx(model, (3, 32, 32), int8_kernels="vnni")
    steps = per_layer_steps(model, proto, next(iter(batches))[0])
    if sums == "int16":
        assert steps["conv1.output_quantizer"] > 10
    else:
        assert max(steps.values()) <= 1 + 1e-4


@pytest.fixture(scope="module")
def dorefa_digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("dorefa") / "run"
    train_run(TrainConfig(epochs=2, batch_size=128, weight_quantizer="dorefa", bits=6).resolved(), run)
    return run / "checkpoints" / "last.pt"


@pytest.mark.parametrize("config", ["4", "mixed"])
def test_digits_dorefa(dorefa_digits_run, config):
    model, _ = load_model(dorefa_digits_run)
    configure_bits(model, config)
    proto, info = export_onnx(model, (1, 8, 8))
    assert any(layer.odd_levels for layer in info.layers.values())
    _assert_exact(validate_export(proto, info, model, _digits_batches()), info)


def test_dorefa_at_8_bit_is_refused_as_not_int8_exact():
    from proqha.errors import ProqhaError

    model, _ = random_cifar("dorefa")
    configure_bits(model, "8")
    with pytest.raises(ProqhaError, match="beyond int8"):
        export_onnx(model, (3, 32, 32))


def test_bn_folding_keeps_the_integer_weights():
    model, batches = random_cifar("lsq")
    configure_bits(model, "4")
    bn = model.get_submodule("layer1.0.bn1")
    with torch.no_grad():  # a negative gamma moves that channel's sign into the integers
        bn.weight[0] = -abs(bn.weight[0])
    proto, info = export_onnx(model, (3, 32, 32))
    kernels = kernel_weights(proto, info)
    for name, layer in quant_layers(model).items():
        record = info.layers[name]
        stored = (kernels[name].astype(np.int64) - record.weight_zero_point) // record.int_factor
        trained = layer.weight_quantizer.integers(layer.weight).numpy()
        if name == "layer1.0.conv1":
            assert record.bn_folded
            assert np.array_equal(stored[0], -trained[0]) and np.array_equal(stored[1:], trained[1:])
        else:
            assert np.array_equal(stored, trained), name
    assert check_pair_sums(proto) == []
    assert max(per_layer_steps(model, proto, next(iter(batches))[0]).values()) <= 1 + 1e-4


def test_re_export_is_byte_identical():
    model, _ = random_cifar("lsq")
    configure_bits(model, "mixed")
    first, _ = export_onnx(model, (3, 32, 32))
    second, _ = export_onnx(model, (3, 32, 32))
    assert first.SerializeToString() == second.SerializeToString()


def test_graph_is_opset_19_with_a_dynamic_batch():
    model, _ = random_cifar("lsq")
    proto, _ = export_onnx(model, (3, 32, 32))
    assert proto.opset_import[0].version >= 19
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch"


# --- the CLI -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_export_writes_model_metadata_and_parity(search_run):
    result = runner.invoke(app, ["export", str(search_run), "--step", "1", "--force"])
    assert result.exit_code == 0, result.output
    path = search_run / "export" / "model-step001.onnx"
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert meta["proqha.step"] == "1" and meta["proqha.arch"] == "digits_resnet"
    assert float(meta["proqha.paper_cost"]) < 0.25 and int(meta["proqha.bitops"]) > 0
    assert (search_run / "export" / "model-step001.parity.json").is_file()
    assert "parity with PyTorch" in result.stdout
    again = runner.invoke(app, ["parity", str(path), "--samples", "64"])
    assert again.exit_code == 0, again.output
    exists = runner.invoke(app, ["export", str(search_run), "--step", "1"])
    assert exists.exit_code == 2 and "exists; pass --force" in exists.stderr


@pytest.mark.slow
def test_cli_export_fp32_and_best_under_cost(search_run):
    result = runner.invoke(app, ["export", str(search_run), "--format", "onnx-fp32", "--best-under-cost", "0.25",
                                 "--out", str(search_run / "fp32.onnx")])
    assert result.exit_code == 0, result.output
    ops = {n.op_type for n in onnx.load(search_run / "fp32.onnx").graph.node}
    assert "QuantizeLinear" not in ops and "Conv" in ops
    again = runner.invoke(app, ["parity", str(search_run / "fp32.onnx"), "--samples", "64", "--no-reference"])
    assert again.exit_code == 0, again.output
    report = json.loads((search_run / "fp32.parity.json").read_text())
    assert report["parity"][0]["max_abs_diff"] < 1e-4  # against the float twin it was exported from


def test_exporting_a_float_run_to_int8_is_refused_up_front(tmp_path):
    train_run(TrainConfig(epochs=1, batch_size=256, bits=32).resolved(), tmp_path / "float")
    result = runner.invoke(app, ["export", str(tmp_path / "float"), "--out", str(tmp_path / "f.onnx")])
    assert result.exit_code == 2 and "is a float (32-bit) run: export it with --format onnx-fp32" in result.stderr
    assert not (tmp_path / "f.onnx").exists()


@pytest.mark.slow
def test_parity_refuses_a_run_with_other_bits_and_keeps_the_report(search_run, tmp_path):
    out = tmp_path / "step1.onnx"
    assert runner.invoke(app, ["export", str(search_run), "--step", "1", "--out", str(out)]).exit_code == 0
    before = (tmp_path / "step1.parity.json").read_text()
    result = runner.invoke(app, ["parity", str(out), "--run", str(search_run.parent / "train-1"), "--samples", "64"])
    assert result.exit_code == 2 and "was exported from: bits differ" in result.stderr
    assert (tmp_path / "step1.parity.json").read_text() == before


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_parity_refuses_a_corrupted_model_with_one_line(search_run, tmp_path, damage):
    runner.invoke(app, ["export", str(search_run), "--out", str(tmp_path / "good.onnx"), "--no-check"])
    data = (tmp_path / "good.onnx").read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes({"truncate": data[: len(data) // 3], "garbage": b"\x00\xff" * 500, "empty": b""}[damage])
    result = runner.invoke(app, ["parity", str(bad)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.onnx" in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--step", "99"], "--step 99"),
    (["--best-under-cost", "0.001"], "no step"),
    (["--format", "tflite"], "--format must be one of"),
    (["--profile", "coreml"], "--profile must be one of"),
])
def test_cli_export_bad_input(search_run, args, message):
    result = runner.invoke(app, ["export", str(search_run), *args, "--out", str(search_run / "x.onnx")])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (search_run / "x.onnx").exists()


def test_agreement_counts_one_step_ties_but_not_real_disagreements():
    from proqha.export.validate import Parity

    step = 0.5
    ref = np.array([[2.0, 1.5, 0.0], [2.0, 0.5, 0.0], [1.0, 3.0, 0.0]], np.float32)
    # row 0: the runtime picks class 1, one step below PyTorch's best (a tie); row 1: class 1, three steps
    # below (a real disagreement); row 2: the same pick
    out = np.array([[1.5, 2.0, 0.0], [1.0, 1.5, 0.0], [1.0, 3.0, 0.0]], np.float32)
    p = Parity("x")
    p.update(ref, out, np.array([0, 0, 1]), step)
    assert p.agreement == pytest.approx(100 / 3)
    assert p.agreement_ties == pytest.approx(200 / 3)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs OpenVINO (pip install -e '.[openvino]')")
def test_parity_in_openvino_is_measured_and_reported(search_run, tmp_path):
    out = tmp_path / "m.onnx"
    assert runner.invoke(app, ["export", str(search_run), "--out", str(out), "--no-check"]).exit_code == 0
    result = runner.invoke(app, ["parity", str(out), "--samples", "64", "--no-reference", "--engine", "openvino"])
    assert result.exit_code == 0, result.output
    assert "OpenVINO runs" in result.stdout
    report = json.loads(out.with_suffix(".parity.json").read_text())
    runtimes = {r["runtime"]: r for r in report["parity"]}
    assert set(runtimes) == {"onnxruntime", "openvino"} and runtimes["openvino"]["samples"] == 64
    assert runtimes["openvino"]["agreement_ties"] >= 95.0  # not exact, but the same model
    layers = report["openvino_layers"]
    assert layers["int8"] + layers["float"] == len(json.loads(onnx_meta(out)["proqha.bits"]))
    bad = runner.invoke(app, ["parity", str(out), "--engine", "trt"])
    assert bad.exit_code == 2 and "--engine must be one of ort, openvino" in bad.stderr


def onnx_meta(path):
    return {p.key: p.value for p in onnx.load(path).metadata_props}
