"""A quantizer right after another one (a residual add's output feeding one conv) stays two roundings in
onnxruntime: without the integer Clip the exporter writes there, its DoubleQDQPairsRemover merges the two
Q/DQ pairs into one quantization and the deployed model computes something else."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import calibrate_bn
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from proqha.export.onnx_export import export_onnx
from proqha.export.ort_session import ort_session
from proqha.export.validate import validate_export
from proqha.quant import QuantConfig, quantize_model


def _double_qdq(clip: bool):
    """x -> Q(s1) -> DQ -> Q(s2) [-> integer Clip 0..255] -> DQ."""
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("s1", 0.05), ("s2", 0.0731))]
    inits += [numpy_helper.from_array(np.array(v, np.uint8), n) for n, v in (("z", 0), ("lo", 0), ("hi", 255))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s1", "z"], ["q1"]),
             helper.make_node("DequantizeLinear", ["q1", "s1", "z"], ["d1"]),
             helper.make_node("QuantizeLinear", ["d1", "s2", "z"], ["q2"])]
    if clip:
        nodes.append(helper.make_node("Clip", ["q2", "lo", "hi"], ["c2"]))
    nodes.append(helper.make_node("DequantizeLinear", ["c2" if clip else "q2", "s2", "z"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model


def test_onnxruntime_merges_back_to_back_qdq_unless_an_integer_clip_separates_them():
    x = np.random.default_rng(0).uniform(0, 12, 1000).astype(np.float32)
    changed = {}
    for clip in (False, True):
        model = _double_qdq(clip)
        ort_out = ort_session(model.SerializeToString()).run(None, {"x": x})[0]
        changed[clip] = float((np.abs(ort_out - ReferenceEvaluator(model).run(None, {"x": x})[0]) > 1e-6).mean())
    assert changed[True] == 0.0
    # the property the exporter relies on; if onnxruntime stops merging, the Clip is merely redundant
    assert changed[False] > 0.0 or changed[True] == 0.0


class _AddIntoOneConv(nn.Module):
    """A residual add whose output feeds a single conv: the conv's input quantizer requantizes it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.branch(x))
        return self.fc(self.down(x).mean([2, 3]))


def _calibrated_add_into_one_conv(share_grids: bool = True) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(136, 3, 8, 8)
    model = quantize_model(_AddIntoOneConv(), QuantConfig(bits=8, share_grids=share_grids))
    with torch.no_grad():
        model.fc.weight.mul_(20)  # logits spread over many output steps
    calibrate_bn(model, x[:8])
    return model, x


def _requantizing_nodes(proto) -> list[str]:
    return [n.op_type for n in proto.graph.node if n.name.startswith("down.0.input")]


def test_requantization_after_an_add_is_exact_in_onnxruntime():
    model, x = _calibrated_add_into_one_conv(share_grids=False)  # as models trained before shared grids
    with torch.no_grad():  # a range of its own, as training leaves it: a real second rounding
        model.get_submodule("down.0").input_quantizer.alpha.mul_(0.8)
    proto, info = export_onnx(model, (3, 8, 8))
    assert _requantizing_nodes(proto) == ["QuantizeLinear", "Clip", "DequantizeLinear"], \
        "the requantizing input of down.0 must keep its integer Clip"
    report = validate_export(proto, info, model, DataLoader(TensorDataset(x[8:], torch.zeros(128).long()), batch_size=64))
    assert report.ok, report.failures
    assert report.parity[0].max_steps <= 2


@pytest.mark.parametrize("share_grids", [True, False])
def test_a_quantizer_on_the_grid_its_input_is_already_on_is_not_written(share_grids):
    # down.0's input quantizer shares the add output's grid (or, calibrated on the same batches, holds the
    # same range): the second rounding is the identity, so the graph leaves it out (no Q/Clip/DQ to run)
    model, x = _calibrated_add_into_one_conv(share_grids)
    down = model.get_submodule("down.0").input_quantizer
    assert down.shares_grid == share_grids
    if share_grids:  # whatever its own range says, it quantizes on the add's grid
        with torch.no_grad():
            down.alpha.mul_(0.8)
    assert torch.equal(down.scale(), model.add.output_quantizer.scale())
    proto, info = export_onnx(model, (3, 8, 8))
    assert _requantizing_nodes(proto) == []
    report = validate_export(proto, info, model, DataLoader(TensorDataset(x[8:], torch.zeros(128).long()), batch_size=64))
    assert report.ok, report.failures
    assert report.parity[0].max_steps <= 2 and report.parity[1].max_steps <= 1
    model.get_submodule("down.0").set_bits(a=7)  # a narrower grid at another step: written again
    assert _requantizing_nodes(export_onnx(model, (3, 8, 8))[0]) == ["QuantizeLinear", "Clip", "DequantizeLinear"]
