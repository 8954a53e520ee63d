"""A strided stem conv on few channels is exported as SpaceToDepth + a stride-1 conv: the same function,
exact in onnxruntime and the ONNX reference evaluator, in int8 kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import calibrate_bn
from proqha.export.onnx_export import export_onnx
from proqha.export.pair_sums import check_pair_sums
from proqha.export.space_to_depth import plan, rearrange
from proqha.export.validate import validate_export
from proqha.quant import QuantConfig, quantize_model


def _space_to_depth(x: np.ndarray, s: int) -> np.ndarray:
    """ONNX SpaceToDepth as its specification writes it."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // s, s, w // s, s).transpose(0, 3, 5, 1, 2, 4).reshape(b, c * s * s, h // s, w // s)


@pytest.mark.parametrize("c, k, s, p, size", [(3, 7, 2, 3, 32), (3, 3, 2, 1, 16), (1, 3, 2, 1, 8), (3, 4, 4, 0, 16),
                                              (3, 11, 4, 2, 32), (3, 5, 2, 0, 16), (4, 7, 2, 3, 30), (3, 3, 3, 1, 27),
                                              (3, 2, 2, 1, 8)])
def test_the_rewritten_conv_computes_the_original(c, k, s, p, size):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, c, size, size)), rng.standard_normal((5, c, k, k))
    expected = F.conv2d(torch.tensor(x), torch.tensor(w), stride=s, padding=p).numpy()
    form = plan(c, 1, (k, k), (s, s), (1, 1), (p, p), (size, size))
    assert form is not None and form.block == s
    xs = np.pad(_space_to_depth(x, s), ((0, 0), (0, 0), (form.pads[0], form.pads[2]), (form.pads[1], form.pads[3])))
    got = F.conv2d(torch.tensor(xs), torch.tensor(rearrange(w, form, (p, p)))).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-9)


@pytest.mark.parametrize("args", [
    dict(in_channels=8), dict(groups=3), dict(stride=(1, 1)), dict(stride=(2, 1)), dict(dilation=(2, 2)),
    dict(spatial=(31, 32)),
])
def test_it_applies_only_to_plain_strided_convs_on_few_channels(args):
    base = dict(in_channels=3, groups=1, kernel=(3, 3), stride=(2, 2), dilation=(1, 1), pads=(1, 1), spatial=(32, 32))
    assert plan(**base) is not None
    assert plan(**(base | args)) is None


class Stem(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 16, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, 2, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("channels", [1, 3])
def test_a_stem_conv_exports_as_space_to_depth_and_stays_exact(channels):
    torch.manual_seed(0)
    x = torch.randn(96, channels, 32, 32)
    model = calibrate_bn(quantize_model(Stem(channels), QuantConfig(bits=8)), x[:32])
    proto, info = export_onnx(model, (channels, 32, 32))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("SpaceToDepth") == 1  # the stem only: conv2 has 16 input channels
    assert info.layers["conv1"].space_to_depth == 2 and info.layers["conv2"].space_to_depth == 1
    assert check_pair_sums(proto) == []
    batches = DataLoader(TensorDataset(x[32:], torch.randint(0, 10, (64,))), batch_size=32)
    report = validate_export(proto, info, model, batches)
    assert report.ok, report.failures
    assert report.kernels.integer_layers == 3 and report.kernels.float_layers == 0
    ort_parity, ref_parity = report.parity
    assert ref_parity.max_steps <= 1 and ort_parity.max_steps <= 1  # exact up to float ties
    trt, _ = export_onnx(model, (channels, 32, 32), profile="trt")
    assert "SpaceToDepth" not in [n.op_type for n in trt.graph.node]
