"""The cost model against the paper's table and a hand-computed network."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from proqha.cli.app import app
from proqha.cost import cost_report, format_ratio
from proqha.models import create_model
from proqha.quant import BitConfig, QuantConfig, quantize_model


@pytest.mark.parametrize("bits, paper", [(5, 0.1563), (3, 0.0938)])
def test_resnet18_reproduces_the_paper_cost(bits, paper):
    model = quantize_model(create_model("resnet18"), QuantConfig(bits=bits))
    report = cost_report(model, (3, 224, 224))
    assert report.paper_cost == pytest.approx(bits / 32)
    assert format_ratio(report.paper_cost) == str(paper)  # the paper rounds half up
    assert report.macs == pytest.approx(1.814e9, rel=1e-3)  # ResNet-18's well-known 1.8 GMACs


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_bitops_and_size_of_a_hand_computable_net():
    model = quantize_model(TwoLayer(), QuantConfig(edge_layers="search"))
    BitConfig({"conv": {"w": 4, "a": 8}, "fc": {"w": 2, "a": 3}}).apply(model)
    report = cost_report(model, (1, 4, 4))
    conv, fc = report.layers
    assert (conv.macs, conv.params) == (4 * 4 * 2 * 9, 18)  # 16 positions x 2 filters x 3x3x1
    assert (fc.macs, fc.params) == (32 * 3, 96)
    assert report.bitops == 288 * 4 * 8 + 96 * 2 * 3
    assert report.bitops_ratio == pytest.approx((288 * 32 + 96 * 6) / (384 * 1024))
    assert report.paper_cost == pytest.approx((4 * 18 + 2 * 96) / (32 * 114))
    # 9 + 24 bytes of packed weights; biases (5) and quantizer ranges as float32: input and weight
    # (1+2, 1+3) plus the output quantizers of conv (its ReLU feeds a flatten) and fc (the logits)
    assert report.size_bytes == 9 + 24 + 4 * 14
    assert report.float_size_bytes == 4 * (114 + 14)


def test_cost_does_not_touch_the_model():
    model = quantize_model(create_model("digits_resnet"))
    cost_report(model, (1, 8, 8))
    assert not any(getattr(m, "initialized", False) for m in model.modules())


def test_cli_cost_json_and_bits_file(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["cost", "--arch", "resnet18", "--bits", "5", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert format_ratio(data["totals"]["paper_cost"]) == "0.1563"
    assert len(data["layers"]) == 21
    model = quantize_model(create_model("resnet18"))
    bits = BitConfig.from_model(model).to_dict()
    for name in bits:
        if name not in ("conv1", "fc"):
            bits[name] = {"w": 3, "a": 3}
    BitConfig(bits).save(tmp_path / "bits.json")
    result = runner.invoke(app, ["cost", "--bits-file", str(tmp_path / "bits.json"), "--json"])
    assert result.exit_code == 0, result.output
    assert format_ratio(json.loads(result.stdout)["totals"]["paper_cost"]) == "0.0938"


@pytest.mark.parametrize("bits, paper", [(5, "0.1563"), (3, "0.0938")])
def test_cli_cost_table(bits, paper):
    result = CliRunner().invoke(app, ["cost", "--arch", "resnet18", "--bits", str(bits)])
    assert result.exit_code == 0
    assert "layer4.1.conv2" in result.stdout and paper in result.stdout
