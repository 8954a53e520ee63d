"""The TensorRT build/run code against a fake ``tensorrt`` of the 10.x and 11.x API (tests/fake_tensorrt.py):
strong typing without removed flags, every parser error, a profile that takes every batch the bench sends,
one-line shape errors, and the INT8 count from both inspector JSON forms."""

from __future__ import annotations

import json
import sys

import fake_tensorrt
import numpy as np
import pytest
import torch
from helpers import calibrated_resnet20

from proqha.deploy.bench import ACCURACY_BATCH, SANITY_BATCH, engine_max_batch
from proqha.deploy.runtime_trt import TrtRuntime, build_engine, count_precisions
from proqha.errors import ProqhaError
from proqha.export.onnx_export import export_onnx
from proqha.quant import float_twin

VERSIONS = ["10.16.0", "11.4.0"]


@pytest.fixture(params=VERSIONS)
def trt(request, monkeypatch):
    module = fake_tensorrt.make(request.param)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "fake GPU")
    monkeypatch.setattr(fake_tensorrt, "UNSUPPORTED", set())
    return module


@pytest.fixture(scope="module")
def graphs():
    model = calibrated_resnet20(4)
    quantized, info = export_onnx(model, (3, 32, 32), profile="trt")
    floating, _ = export_onnx(float_twin(model), (3, 32, 32), quantized=False)
    return quantized.SerializeToString(), floating.SerializeToString(), len(info.layers)


def test_strongly_typed_network_and_no_precision_flag(trt, graphs):
    engine, settings = build_engine(graphs[0], (3, 32, 32), max_batch=64)
    assert ("create_network", 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)) in trt.calls
    assert not [c for c in trt.calls if c[0] == "set_flag"]  # INT8/FP16 were removed in 11.x
    assert settings["strongly_typed"] and settings["quantized"] and settings["batch"] == {"min": 1, "opt": 8, "max": 64}
    assert settings["tensorrt"] == trt.__version__ and "int8" not in settings
    assert TrtRuntime(engine).max_batch == 64


def test_every_parser_error_in_one_line(trt, graphs):
    fake_tensorrt.UNSUPPORTED.update({"Clip", "Relu"})
    with pytest.raises(ProqhaError) as err:
        build_engine(graphs[0], (3, 32, 32))
    message = str(err.value)
    assert "\n" not in message and "error(s)" in message
    clips = sum(1 for part in message.split(" | ") if "operator: Clip" in part)
    relus = sum(1 for part in message.split(" | ") if "operator: Relu" in part)
    assert clips > 1 and relus > 1  # all of them, not the first one only


def test_the_profile_takes_every_batch_the_bench_sends(trt, graphs):
    batches = [1, 8]
    top = engine_max_batch(batches)
    assert top >= max(batches + [SANITY_BATCH, ACCURACY_BATCH])
    runtime = TrtRuntime(build_engine(graphs[0], (3, 32, 32), max_batch=top)[0])
    for batch in batches + [SANITY_BATCH, ACCURACY_BATCH]:
        assert runtime.set_batch((batch, 3, 32, 32)) == (batch, 10)
    with pytest.raises(ProqhaError, match=rf"^TensorRT refused input shape \({top + 1}, 3, 32, 32\): the engine takes "
                                          rf"batches 1\.\.{top} of its build shape$"):
        runtime.set_batch((top + 1, 3, 32, 32))
    with pytest.raises(ProqhaError, match="refused input shape"):
        runtime.set_batch((1, 3, 28, 28))
    parts = [len(p) for p in runtime.chunks(np.zeros((2 * top + 3, 3, 32, 32), np.float32))]
    assert parts == [top, top, 3]  # larger inputs (a user's test batches) run in parts the profile takes


def test_int8_conv_gemm_count_reads_both_inspector_forms(trt, graphs):
    quantized, floating, layers = graphs
    runtime = TrtRuntime(build_engine(quantized, (3, 32, 32), max_batch=64)[0])
    counts = runtime.layer_precisions()
    assert counts.int8_conv_gemm == counts.conv_gemm == layers  # every conv/gemm of the trt-profile graph
    assert counts.layers == layers + 1 and counts.int8_layers == layers
    # without an execution context the inspector leaves formats out: that is why the context is attached
    bare = json.loads(runtime.engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    assert count_precisions(bare).int8_conv_gemm == 0
    fp32 = TrtRuntime(build_engine(floating, (3, 32, 32), max_batch=64)[0]).layer_precisions()
    assert fp32.int8_conv_gemm == 0 and fp32.conv_gemm == layers


def test_count_precisions_of_hand_written_10x_and_11x_layers():
    v10 = {"Layers": [{"LayerType": "CaskConvolution", "Inputs": [{"Format/Datatype": "Channel major INT8 format"}]},
                      {"LayerType": "CaskGemmConvolution", "Inputs": [{"Format/Datatype": "Row major linear FP32"}]},
                      {"LayerType": "Reformat", "Inputs": [{"Format/Datatype": "Row major Int8 format"}]}],
           "Bindings": ["input", "logits"]}
    v11 = {"Layers": [{"LayerType": "CaskConvolution", "Inputs": [{"Format": "kCHW32", "DataType": "Int8"}]},
                      {"ParameterType": "MatrixMultiply", "Inputs": [{"Format": "kLINEAR", "DataType": "Int8"}]},
                      "a layer name only"],
           "I/O Tensors": []}
    assert count_precisions(v10).to_dict() == {"int8_conv_gemm": 1, "conv_gemm": 2, "int8_layers": 2, "layers": 3}
    assert count_precisions(v11).to_dict() == {"int8_conv_gemm": 2, "conv_gemm": 2, "int8_layers": 2, "layers": 2}


def test_an_engine_of_another_major_version_is_one_line(trt, graphs, monkeypatch):
    engine, _ = build_engine(graphs[0], (3, 32, 32))
    other = fake_tensorrt.make("11.0.0" if trt.__version__.startswith("10") else "10.16.0")
    monkeypatch.setitem(sys.modules, "tensorrt", other)
    with pytest.raises(ProqhaError, match="could not load the engine"):
        TrtRuntime(engine)


@pytest.mark.parametrize("version", ["8.6.1", "12.0.0"])
def test_an_unsupported_tensorrt_is_one_line(version, monkeypatch):
    from proqha.deploy.runtime_trt import require_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.make("10.0.0"))
    sys.modules["tensorrt"].__version__ = version
    with pytest.raises(ProqhaError, match=rf"^TensorRT {version} is not supported: proqha builds with TensorRT 10.x "
                                          r"or 11.x \(pip install -e '\.\[trt\]'\)$"):
        require_tensorrt()
