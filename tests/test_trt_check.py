"""The static TensorRT readiness checker: proqha's trt-profile graph passes, broken ones name the node."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from proqha.deploy.trt_check import check_trt_graph
from proqha.export.onnx_export import export_onnx
from proqha.models import create_model
from proqha.quant import QuantConfig, quantize_model


@pytest.fixture(scope="module")
def graphs():
    torch.manual_seed(0)
    model = quantize_model(create_model("resnet20_post"), QuantConfig(bits=4))
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    model.eval()
    return export_onnx(model, (3, 32, 32), profile="trt")[0], export_onnx(model, (3, 32, 32), profile="ort")[0]


def _replace_init(proto, name, array):
    proto = copy.deepcopy(proto)
    for i, t in enumerate(proto.graph.initializer):
        if t.name == name:
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(array, name))
    return proto


def test_trt_profile_graph_passes(graphs):
    trt, _ = graphs
    assert check_trt_graph(trt) == []
    onnx.checker.check_model(trt, full_check=True)


def test_ort_profile_graph_is_rejected_for_uint8_and_integer_clips(graphs):
    _, ort = graphs
    problems = check_trt_graph(ort)
    assert any("UINT8" in p for p in problems)
    assert any("Clip on an integer tensor" in p for p in problems)
    assert any("INT32" in p for p in problems)  # int32 bias Q/DQ


def test_uint8_quantize_is_rejected_naming_the_node(graphs):
    trt, _ = graphs
    broken = _replace_init(trt, "layer1.0.conv1.input.zero_point", np.array(0, np.uint8))
    problems = check_trt_graph(broken)
    assert problems and all("layer1.0.conv1.input" in p for p in problems) and "UINT8" in problems[0]


def test_non_zero_zero_point_is_rejected(graphs):
    trt, _ = graphs
    broken = _replace_init(trt, "layer2.0.conv2.input.zero_point", np.array(3, np.int8))
    problems = check_trt_graph(broken)
    assert any("layer2.0.conv2.input" in p and "non-zero zero point" in p for p in problems)


def test_weight_axis_1_is_rejected(graphs):
    trt, _ = graphs
    broken = copy.deepcopy(trt)
    node = next(n for n in broken.graph.node if n.name == "layer3.0.conv1.weight")
    for attr in node.attribute:
        if attr.name == "axis":
            attr.i = 1
    problems = check_trt_graph(broken)
    assert problems == ["layer3.0.conv1.weight: per-channel weight scales on axis 1; TensorRT needs axis 0"]


def test_conv_without_dequantized_input_is_rejected(graphs):
    trt, _ = graphs
    broken = copy.deepcopy(trt)
    conv = next(n for n in broken.graph.node if n.name == "layer1.0.conv2")
    dq = next(n for n in broken.graph.node if n.output[0] == conv.input[0])
    clip = next(n for n in broken.graph.node if n.output[0] == next(
        q for q in broken.graph.node if q.output[0] == dq.input[0]).input[0])
    conv.input[0] = clip.input[0]  # feed the float tensor straight in
    problems = check_trt_graph(broken)
    assert any(p.startswith("layer1.0.conv2: input 0 is not dequantized") for p in problems)
