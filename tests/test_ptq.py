"""Post-training calibration (``proqha.quant.ptq``): what each method sets a range to, weights, BatchNorm
re-estimation, and that a calibrated model still exports exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from proqha.quant import QuantConfig, quant_layers, quantize_model
from proqha.quant.ptq import calibrate_ranges, recalibrate_batchnorm
from proqha.quant.quantizers import Quantizer


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _heavy_tailed(n: int = 4) -> list[torch.Tensor]:
    """Batches of mostly small values with a few large ones: where the methods must disagree."""
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n):
        x = torch.randn(64, 3, 12, 12, generator=g)
        x.view(-1)[int(torch.randint(0, x.numel(), (1,), generator=g))] = 40.0  # 1 in 27648 values
        batches.append(x)
    return batches


def _model(bits: int = 8, **options) -> nn.Module:
    torch.manual_seed(0)
    return quantize_model(SmallNet().eval(), QuantConfig(bits=bits, **options), (3, 12, 12))


def _first_input_quantizer(model: nn.Module) -> Quantizer:
    return quant_layers(model)["conv1"].input_quantizer


def test_minmax_takes_the_largest_magnitude_and_the_others_clip_outliers():
    batches = _heavy_tailed()
    top = max(float(b.abs().amax()) for b in batches)
    ranges = {}
    for method in ("minmax", "percentile", "mse"):
        model = _model(bits=4, edge_layers="search")  # the first conv's input at 4 bit
        calibrate_ranges(model, batches, method)
        ranges[method] = float(_first_input_quantizer(model).alpha.detach())
    assert ranges["minmax"] == pytest.approx(top, rel=1e-6)
    assert ranges["percentile"] < 0.5 * top and ranges["mse"] < 0.5 * top


def _squared_error(x: torch.Tensor, alpha: float, qmax: int) -> float:
    step = alpha / qmax
    return float(((x - (x / step).round().clamp(-qmax - 1, qmax) * step) ** 2).sum())


def test_the_mse_range_has_less_error_than_the_largest_and_the_percentile():
    batches = _heavy_tailed()
    x = torch.cat([b.flatten() for b in batches])
    errors = {}
    for method in ("minmax", "percentile", "mse"):
        model = _model(bits=4, edge_layers="search")
        calibrate_ranges(model, batches, method)
        q = _first_input_quantizer(model)
        errors[method] = _squared_error(x, float(q.alpha.detach()), q.qrange()[1])
    assert errors["mse"] <= errors["minmax"] and errors["mse"] <= errors["percentile"]


def test_every_quantizer_is_set_and_the_logits_never_clip():
    batches = _heavy_tailed()
    model = _model()
    calibrate_ranges(model, batches, "mse")
    quantizers = [q for q in model.modules() if isinstance(q, Quantizer) and q.enabled]
    assert quantizers and all(q.initialized for q in quantizers)
    logits = [q for q in quantizers if q.tracks_range]
    assert logits, "the model has a logits quantizer"
    with torch.no_grad():  # the float network's largest logit magnitude is the logits' range
        from proqha.quant import float_twin

        top = max(float(float_twin(model)(b).abs().amax()) for b in batches)
    assert float(logits[0].alpha.detach()) == pytest.approx(top, rel=1e-4)


def test_mse_fits_weight_ranges_below_8_bit_only():
    for bits, expect_max in ((8, True), (4, False)):
        model = _model(bits=bits)
        calibrate_ranges(model, _heavy_tailed(2), "mse")
        layer = quant_layers(model)["conv2"]
        top = layer.weight.detach().flatten(1).abs().amax(1)
        alpha = layer.weight_quantizer.alpha.detach()
        assert torch.allclose(alpha, top) == expect_max
        assert bool((alpha <= top + 1e-6).all())


def test_batchnorm_recalibration_moves_statistics_and_keeps_ranges():
    batches = _heavy_tailed()
    model = _model(bits=4)
    calibrate_ranges(model, batches, "mse")
    ranges = {n: q.alpha.detach().clone() for n, q in model.named_modules() if isinstance(q, Quantizer)}
    before = model.bn1.running_mean.clone()
    assert recalibrate_batchnorm(model, batches) == 2
    assert not torch.allclose(before, model.bn1.running_mean)  # the fresh BatchNorm had mean 0
    for n, q in model.named_modules():
        if isinstance(q, Quantizer) and not q.tracks_range:
            assert torch.equal(ranges[n], q.alpha), n
    assert not model.training and model.bn1.momentum == 0.1
    logits = next(q for q in model.modules() if isinstance(q, Quantizer) and q.tracks_range)
    inputs = []  # the logits quantizer's range covers what the re-estimated model feeds it
    hook = logits.register_forward_pre_hook(lambda mod, args: inputs.append(args[0].abs().amax()))
    with torch.no_grad():
        for b in batches:
            model(b)
    hook.remove()
    assert float(logits.alpha.detach()) == pytest.approx(float(max(inputs)), rel=1e-5)


def test_a_calibrated_model_exports_exactly(tmp_path):
    from proqha.export.stage import export_model

    batches = _heavy_tailed()
    model = _model(bits=6)
    calibrate_ranges(model, batches, "percentile")
    recalibrate_batchnorm(model, batches)
    data = [(b, torch.zeros(len(b), dtype=torch.long)) for b in batches]
    result = export_model(model, tmp_path / "m.onnx", (3, 12, 12), data)
    assert result.report is not None and result.report.ok, result.report.failures


def test_the_api_quantize_calibrates_on_calib_data_as_the_cli_does():
    import proqha
    from proqha.errors import OptionError

    batches = _heavy_tailed(2)
    torch.manual_seed(0)
    net = SmallNet().eval()
    pairs = [(b, torch.zeros(len(b), dtype=torch.long)) for b in batches]  # as a DataLoader yields them
    by_api = proqha.quantize(net, batches[0][:2], bits=4, calib_data=pairs, calib_method="percentile",
                             bn_recalib=False)
    by_hand = _model(bits=4)
    calibrate_ranges(by_hand, batches, "percentile")
    for (name, a), (_, b) in zip(by_api.named_modules(), by_hand.named_modules()):
        if isinstance(a, Quantizer):
            assert torch.allclose(a.alpha, b.alpha), name
    assert not by_api.training
    # by default BatchNorm is re-estimated below 6 bit only
    below = proqha.quantize(net, batches[0][:2], bits=4, calib_data=pairs, calib_method="percentile")
    at_6 = proqha.quantize(net, batches[0][:2], bits=6, calib_data=pairs, calib_method="percentile")
    assert not torch.allclose(below.bn1.running_mean, by_api.bn1.running_mean)
    assert torch.equal(at_6.bn1.running_mean, net.bn1.running_mean)
    with pytest.raises(OptionError, match="calib_method must be one of"):
        proqha.quantize(net, batches[0][:2], calib_data=pairs, calib_method="kl")
