"""The static TensorRT readiness checker: proqha's trt-profile graph passes, broken ones name the node."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from helpers import calibrated_resnet20
from onnx import numpy_helper

from proqha.deploy.trt_check import check_trt_graph
from proqha.export.onnx_export import export_onnx


@pytest.fixture(scope="module")
def graphs():
    model = calibrated_resnet20(4)
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
    assert problems == ["layer3.0.conv1.weight: per-channel weight scales on axis 1; TensorRT needs axis 0",
                        "layer3.0.conv1.weight: 64 scales for a weight of shape (64, 32, 3, 3) on axis 1; TensorRT "
                        "needs one per channel of that axis"]


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


def _node(proto, name):
    return next(n for n in proto.graph.node if n.name == name)


def test_quantize_without_zero_point_is_rejected(graphs):
    trt, _ = graphs
    broken = copy.deepcopy(trt)
    q = _node(broken, "layer1.0.conv1.input.q")
    del q.input[2]  # ONNX then quantizes to uint8
    problems = check_trt_graph(broken)
    assert any(p.startswith("layer1.0.conv1.input.q: QuantizeLinear without a zero point outputs UINT8") for p in problems)


def test_dequantize_input_of_another_type_is_rejected(graphs):
    trt, _ = graphs
    name = "layer1.0.conv1.weight_int8"
    weights = next(numpy_helper.to_array(t) for t in trt.graph.initializer if t.name == name)
    broken = _replace_init(trt, name, weights.astype(np.int16))
    assert check_trt_graph(broken) == ["layer1.0.conv1.weight: DequantizeLinear input of type INT16; TensorRT needs "
                                       "INT8 (matching the zero point)"]


def test_scale_and_zero_point_lengths_must_match_the_axis(graphs):
    trt, _ = graphs
    scale = next(numpy_helper.to_array(t) for t in trt.graph.initializer if t.name == "layer1.0.conv1.weight_scale")
    short = _replace_init(trt, "layer1.0.conv1.weight_scale", scale[:-1])
    assert any(p.startswith("layer1.0.conv1.weight: 15 scales for a weight of shape (16, 16, 3, 3)")
               for p in check_trt_graph(short))
    zeros = _replace_init(trt, "layer1.0.conv1.weight_zero_point", np.zeros(3, np.int8))
    assert check_trt_graph(zeros) == ["layer1.0.conv1.weight: zero point shape (3,) differs from the scale's (16,)"]


def _residual(other_from_conv: bool) -> onnx.ModelProto:
    """x -> Q/DQ -> conv -> (+ identity Q/DQ) : the add's other input straight from a conv, or through a Relu."""
    from onnx import TensorProto, helper

    inits = [numpy_helper.from_array(a, n) for a, n in [
        (np.array(0.1, np.float32), "s"), (np.array(0, np.int8), "z"),
        (np.ones((4, 4, 1, 1), np.int8), "w"), (np.full(4, 0.01, np.float32), "ws"), (np.zeros(4, np.int8), "wz")]]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="x.q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="x.dq"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="w.dq", axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv")]
    branch = "c"
    if not other_from_conv:
        nodes.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
        branch = "r"
    nodes.append(helper.make_node("Add", [branch, "xd"], ["y"], name="add"))
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_residual_with_qdq_on_the_identity_only_is_accepted_when_the_other_input_is_a_conv():
    assert check_trt_graph(_residual(other_from_conv=True)) == []  # NVIDIA's fusible pattern
    problems = check_trt_graph(_residual(other_from_conv=False))
    assert problems == ["add: one input of the residual add is dequantized and the other does not come from a conv "
                        "(TensorRT fuses an add into the conv before it only)"]
