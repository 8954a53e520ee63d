"""quantize_model on every registered model, and on models written by hand."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import calibrate_bn
from torch import nn

from proqha.models import create_model, get_model_spec, list_models
from proqha.quant import (
    PACTQuantizer,
    QuantAdd,
    QuantConfig,
    QuantConv2d,
    QuantLinear,
    SignedActQuantizer,
    load_float_state_dict,
    quant_layers,
    quantize_model,
    searchable_layers,
)


def _small_input(name: str, batch: int = 4) -> torch.Tensor:
    c, h, w = get_model_spec(name).input_size
    side = min(h, 64)
    return torch.randn(batch, c, side, side)


def _float_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    model = create_model(name, num_classes=10)
    x = _small_input(name)
    return calibrate_bn(model, x), x


@pytest.mark.parametrize("name", list_models())
def test_every_model_converts_exactly_at_32_bits_and_closely_at_8(name):
    model, x = _float_model(name)
    with torch.no_grad():
        ref = model(x)
        twin32 = quantize_model(model, QuantConfig(bits=32)).eval()
        assert torch.equal(twin32(x), ref)
        twin8 = quantize_model(model, QuantConfig(bits=8)).eval()
        out8 = twin8(x)
    assert not torch.equal(out8, ref)  # quantization is really on
    # relative RMS error: a broken conversion gives O(1); rounding compounds with depth in random nets
    # (ResNet-50: 0.08-0.18 over seeds 0-2 on either 8-bit grid, different on each CPU kind's float kernels)
    rel = (out8 - ref).norm() / ref.norm()
    assert rel < 0.25, f"{name}: 8-bit output deviates by {rel:.3f} (relative RMS)"
    # every conv/linear of the float model is converted, under its own module path
    floats = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert set(quant_layers(twin8)) == floats
    # the float model itself is untouched
    assert not any(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules())


@pytest.mark.parametrize("name", ["resnet20", "resnet20_post", "mobilenet_v2", "resnet18"])
def test_quantized_model_trains(name):
    model, x = _float_model(name)
    twin = quantize_model(model).train()
    loss = F.cross_entropy(twin(x), torch.zeros(len(x), dtype=torch.long))
    loss.backward()
    for layer_name, layer in quant_layers(twin).items():
        assert layer.weight.grad is not None, layer_name
        assert layer.weight_quantizer.alpha.grad is not None, layer_name
        assert layer.input_quantizer.alpha.grad is not None, layer_name


def test_residual_adds_get_8_bit_quantizers_and_fold_relu():
    model, x = _float_model("resnet20_post")
    twin = quantize_model(model, QuantConfig(bits=4))
    adds = {n: m for n, m in twin.named_modules() if isinstance(m, QuantAdd)}
    assert len(adds) == 9 and "layer1.0.add" in adds
    for add in adds.values():
        assert add.relu  # post-activation: add then ReLU
        assert isinstance(add.output_quantizer, PACTQuantizer) and add.output_quantizer.bits == 8
        assert isinstance(add.input_quantizer_a, SignedActQuantizer)  # conv-BN output can be negative
    # the identity of block 2 is block 1's quantized output: not quantized twice
    assert isinstance(adds["layer1.1.add"].input_quantizer_b, nn.Identity)
    # conv inputs after ReLU (or after a ReLU-folding add) are PACT; the image input is signed
    layers = quant_layers(twin)
    assert isinstance(layers["conv1"].input_quantizer, SignedActQuantizer)
    assert isinstance(layers["layer1.0.conv2"].input_quantizer, PACTQuantizer)
    assert isinstance(layers["layer1.1.conv1"].input_quantizer, PACTQuantizer)
    assert isinstance(layers["fc"].input_quantizer, PACTQuantizer)  # ReLU -> avg pool -> flatten -> fc


def test_every_conv_output_reaches_exactly_one_quantizer():
    model, _ = _float_model("digits_resnet")
    twin = quantize_model(model)
    # the stem's ReLU output feeds layer1.0.conv1 and the residual add: one shared quantizer
    assert isinstance(twin.conv1.output_quantizer, PACTQuantizer)
    assert isinstance(twin.get_submodule("layer1.0.add").input_quantizer_b, nn.Identity)
    assert isinstance(twin.fc.output_quantizer, SignedActQuantizer)
    assert not hasattr(twin.get_submodule("layer1.0.conv1"), "output_quantizer")  # its ReLU feeds conv2 only


def test_linear_bottleneck_adds_are_signed():
    model, _ = _float_model("mobilenet_v2")
    twin = quantize_model(model)
    adds = [m for m in twin.modules() if isinstance(m, QuantAdd)]
    assert len(adds) == 10
    assert all(not a.relu and isinstance(a.output_quantizer, SignedActQuantizer) for a in adds)
    depthwise = [m for m in quant_layers(twin).values() if isinstance(m, QuantConv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels for m in depthwise)
    assert all(m.weight_quantizer.alpha.numel() == m.out_channels for m in depthwise)


@pytest.mark.parametrize("edge, bits, searched", [("int8", 8, False), ("float", 32, False), ("search", 4, True)])
def test_first_conv_and_last_linear(edge, bits, searched):
    model, _ = _float_model("resnet20")
    twin = quantize_model(model, QuantConfig(bits=4, edge_layers=edge))
    layers = quant_layers(twin)
    for name in ("conv1", "fc"):
        assert layers[name].w_bits == bits and layers[name].a_bits == bits
        assert layers[name].searchable is searched
    assert layers["layer1.0.conv1"].w_bits == 4 and layers["layer1.0.conv1"].searchable
    assert len(searchable_layers(twin)) == len(layers) - (0 if searched else 2)


def test_float_checkpoint_loads_into_the_twin():
    model, x = _float_model("resnet20_post")
    other = create_model("resnet20_post", num_classes=10)
    twin = quantize_model(other, QuantConfig(bits=8)).eval()
    with torch.no_grad():
        twin(x)  # quantizer ranges initialised from the wrong (random) weights...
        load_float_state_dict(twin, model.state_dict())
        out = twin(x)  # ...are re-initialised from the loaded ones
        twin32 = quantize_model(other, QuantConfig(bits=32)).eval()
        load_float_state_dict(twin32, model.state_dict())
        assert torch.equal(twin32(x), model(x))
    layer = quant_layers(twin)["layer1.0.conv1"]
    assert torch.allclose(layer.weight_quantizer.alpha, model.layer1[0].conv1.weight.abs().flatten(1).amax(1))
    assert (out - model(x)).abs().max() / model(x).abs().max() < 0.1


def test_checkpoint_of_another_architecture_is_refused():
    twin = quantize_model(create_model("resnet20_post"))
    with pytest.raises(ValueError, match="does not match"):
        load_float_state_dict(twin, create_model("resnet32_post").state_dict())


class _HandWritten(nn.Module):
    """Residual adds written inline, a shape computation and a depthwise conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = self.pw(F.relu(self.dw(x)))
        x = x + y
        n = x.size(0) + 0  # not a tensor add
        return self.head(x.mean((2, 3)).reshape(n, -1))


def test_hand_written_model_adds_found_and_shape_arithmetic_ignored():
    twin = quantize_model(_HandWritten())
    adds = [m for m in twin.modules() if isinstance(m, QuantAdd)]
    assert len(adds) == 1
    # the stem's ReLU output feeds two branches: quantized once, shared, and not again at the add
    assert isinstance(twin.stem.output_quantizer, PACTQuantizer)
    assert isinstance(adds[0].input_quantizer_a, nn.Identity)
    assert isinstance(adds[0].input_quantizer_b, SignedActQuantizer)  # the pointwise conv's linear output
    assert isinstance(twin.head.output_quantizer, SignedActQuantizer)  # the logits get one grid too
    assert twin(torch.randn(2, 3, 8, 8)).shape == (2, 5)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow defeats symbolic tracing
            x = -x
        return self.fc(self.conv(x).mean((2, 3)))


def test_untraceable_model_falls_back_to_a_module_walk():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        twin = quantize_model(_Untraceable())
    assert any("could not trace" in str(w.message) for w in caught)
    assert set(quant_layers(twin)) == {"conv", "fc"}
    assert twin(torch.randn(2, 3, 6, 6)).shape == (2, 2)


def test_a_recipe_saved_before_the_portable_grid_rebuilds_the_grids_it_trained_on():
    from proqha.quant.grid import LEGACY_QUANT
    from proqha.recipe import ModelRecipe, build_model

    new = ModelRecipe("digits_resnet", 10, 1, (1, 8, 8))
    old = ModelRecipe.from_dict(new.to_dict() | {"quant": {k: v for k, v in new.quant.items() if k not in LEGACY_QUANT}})
    assert new.quant["int8_kernels"] == "portable" and new.quant["share_grids"] is True
    assert old.quant["int8_kernels"] == "vnni" and old.quant["share_grids"] is False
    for recipe, qmax, shared in ((new, 64, True), (old, 127, False)):
        layers = quant_layers(build_model(recipe))
        assert {m.weight_quantizer.qrange()[1] for n, m in layers.items() if m.input_quantizer.bits == 8} == {qmax}
        assert any(m.input_quantizer.grid_source is not None for m in layers.values()) == shared
    assert ModelRecipe.from_dict(new.to_dict()).quant == new.quant  # a new recipe reads back as saved
