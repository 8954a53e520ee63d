"""torchvision's classifiers convert, export and run exactly in onnxruntime's int8 kernels.

The default run takes one model per new operator family (random weights with calibrated statistics, see
``benchmarks/zoo.py``); ``PROQHA_ZOO=all pytest tests/test_zoo.py`` runs every torchvision classifier.
ViT, MaxViT and Swin (V1 and V2) run in small configurations of torchvision's own classes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from zoo import (  # noqa: E402
    calibrate,
    calibrated_detector,
    calibrated_model,
    calibrated_segmenter,
    classes_predicted,
    classifiers,
    input_size,
    logit_spread,
    noise_floor,
    zoo_failures,
)

from proqha.errors import ProqhaError  # noqa: E402
from proqha.export.layer_parity import per_layer_steps  # noqa: E402
from proqha.export.onnx_export import export_onnx  # noqa: E402
from proqha.export.pair_sums import check_pair_sums  # noqa: E402
from proqha.export.validate import validate_export  # noqa: E402
from proqha.quant import QuantConfig, quantize_model  # noqa: E402

pytestmark = pytest.mark.slow  # every case converts and exports torchvision models

FAMILIES = [  # (model, input size, bits): the operators each one brings; the rest in test_operators_*
    ("mobilenet_v3_small", 32, "8"),      # Hardswish, Hardsigmoid, squeeze-excitation mul
    ("mobilenet_v3_small", 32, "mixed"),  # the same at 2..8-bit knobs, depthwise convs
    ("shufflenet_v2_x0_5", 32, "8"),      # cat, chunk, channel shuffle (view, transpose), mean
]
ALL = os.environ.get("PROQHA_ZOO") == "all"


def _batches(x: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=8)


def _check_exact(name: str, size: int, bits: str) -> None:
    """Exported, every conv/linear/matmul in an int8 kernel, int16-safe, and onnxruntime agrees with PyTorch
    up to the one-step ties that random-weight networks amplify (benchmarks/zoo.py says why)."""
    model, x = calibrated_model(name, size, bits)
    proto, info = export_onnx(model, (3, size, size))
    report = validate_export(proto, info, model, _batches(x), reference=False)
    spread = logit_spread(model, x, info.output_scale)
    floor = noise_floor(model, x, info.output_scale)
    assert zoo_failures(report, info.all_layers, check_pair_sums(proto), spread, floor) == [], name
    assert report.kernels.float_layers <= report.kernels.integer_layers  # float kernels: standalone norms only


@pytest.mark.parametrize("name, size, bits", FAMILIES)
def test_family_exports_exactly(name, size, bits):
    _check_exact(name, size, bits)


@pytest.mark.skipif(not ALL, reason="the whole torchvision list takes long: PROQHA_ZOO=all runs it")
@pytest.mark.parametrize("name", classifiers())
def test_every_classifier_exports_exactly(name):
    _check_exact(name, input_size(name, 64), "8")


def _small_vit():
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=10)


def _small_maxvit():
    from torchvision.models.maxvit import MaxVit

    return MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8], block_layers=[1],
                  head_dim=4, stochastic_depth_prob=0.0, num_classes=10)


def _small_swin(v2: bool = False):
    from torchvision.models import swin_transformer as swin

    blocks = dict(block=swin.SwinTransformerBlockV2, downsample_layer=swin.PatchMergingV2) if v2 else {}
    return swin.SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2, 2], num_heads=[2, 2], window_size=[2, 2],
                                num_classes=10, **blocks)


@pytest.mark.parametrize("bits", ["8", "mixed"])
@pytest.mark.parametrize("build, size, matmuls", [
    (_small_vit, 32, 4), (_small_maxvit, 32, 4), (_small_swin, 28, 8), (lambda: _small_swin(v2=True), 28, 8),
], ids=["vit", "maxvit", "swin", "swin_v2"])
def test_transformer_exports_exactly(build, size, matmuls, bits):
    """torchvision's transformers in small configurations: ViT (class token expand and cat, position
    embedding, nn.MultiheadAttention, GELU MLP, x[:, 0]), MaxViT (einsum attention, a relative position bias
    gathered from its table, window and grid partitions, chunked q/k/v), Swin V1 and V2 at 28x28 (padding
    to whole windows, cyclic shift and its mask, patch merging, V2's cosine attention and position-bias
    MLP). Every projection and attention matmul in int8 kernels, and the export's own parity rules
    (onnxruntime and onnx.reference) hold."""
    model, x = calibrate(build(), size, bits)
    proto, info = export_onnx(model, (3, size, size))
    assert info.matmuls == matmuls  # q k^T and p v in each attention block
    report = validate_export(proto, info, model, _batches(torch.cat([x, x + 0.5])))
    assert report.ok, report.failures
    assert report.kernels.ops.get("QLinearMatMul") == matmuls and report.kernels.integer_layers == info.all_layers
    assert check_pair_sums(proto) == []
    assert logit_spread(model, x, info.output_scale) >= 8


def test_window_attention_without_input_size_is_refused_with_one_line():
    """Swin's window attention depends on the input size: without it, conversion leaves it opaque and the
    export names it in one line."""
    model = quantize_model(_small_swin(), QuantConfig(bits=8))
    with torch.no_grad():
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ProqhaError, match="cannot export function shifted_window_attention") as err:
        export_onnx(model.eval(), (3, 28, 28))
    assert "\n" not in str(err.value)


def test_linear_on_tokens_keeps_features_last():
    """A Linear on (N, T, C) inputs: per-output-channel weights, and the bias on the last axis."""

    class Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 6)
            self.head = torch.nn.Linear(6 * 16, 4)

        def forward(self, x):
            t = self.conv(x).flatten(2).transpose(1, 2)  # (N, 16, 8)
            return self.head(torch.relu(self.fc(t)).flatten(1))

    torch.manual_seed(0)
    x = torch.randn(40, 3, 4, 4)
    q = quantize_model(Tokens(), QuantConfig(bits=8))
    with torch.no_grad():
        q(x[:8])
    q.eval()
    proto, info = export_onnx(q, (3, 4, 4))
    report = validate_export(proto, info, q, _batches(x[8:]))
    assert report.ok, report.failures


class _Operators(torch.nn.Module):
    """One block of every operator family the zoo needs, small enough to run in a second."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.ops import StochasticDepth

        n = torch.nn
        self.stem = n.Sequential(n.Conv2d(3, 16, 3, padding=1), n.BatchNorm2d(16), n.SiLU())
        self.dw = n.Sequential(n.Conv2d(16, 16, 3, padding=1, groups=16), n.BatchNorm2d(16), n.Hardswish())
        self.se = n.Sequential(n.AdaptiveAvgPool2d(1), n.Conv2d(16, 4, 1), n.ReLU(), n.Conv2d(4, 16, 1), n.Sigmoid())
        self.drop_path = StochasticDepth(0.2, "row")
        self.mix = n.Conv2d(16, 16, 1)
        self.norm = n.LayerNorm(16)
        self.mlp = n.Linear(16, 32)
        self.gelu = n.GELU()
        self.proj = n.Linear(32, 16)
        self.scale = n.Parameter(torch.full((16,), 0.5))
        self.head = n.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x)
        y = y * self.se(y)
        x = x + self.drop_path(y)
        a, b = x.chunk(2, dim=1)
        x = torch.cat([b, torch.relu(a)], dim=1)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)  # channel shuffle
        t = self.mix(x).permute(0, 2, 3, 1)  # channels last
        t = self.proj(self.gelu(self.mlp(self.norm(t))))
        x = x + (self.scale * t).permute(0, 3, 1, 2)
        return self.head(x.mean([2, 3]))


@pytest.mark.parametrize("bits", ["8", "mixed"])
def test_operators_export_exactly(bits):
    import itertools

    from helpers import calibrate_bn

    from proqha.quant import searchable_layers

    torch.manual_seed(0)
    x = torch.randn(72, 3, 8, 8)
    model = quantize_model(_Operators(), QuantConfig(bits=8))
    calibrate_bn(model, x[:8])
    if bits == "mixed":
        cycle = itertools.cycle(range(2, 9))
        for layer in searchable_layers(model).values():
            layer.set_bits(w=next(cycle), a=next(cycle))
    proto, info = export_onnx(model, (3, 8, 8))
    ops = {n.op_type for n in proto.graph.node}
    assert {"Concat", "Split", "Transpose", "LayerNormalization", "Erf", "HardSwish", "Sigmoid", "Mul"} <= ops
    report = validate_export(proto, info, model, _batches(x[8:]))
    assert report.ok, report.failures  # the export's own rules: int8 kernels, parity within 2 steps
    assert report.kernels.integer_layers == len(info.layers)
    assert logit_spread(model, x[8:], info.output_scale) >= 8


@pytest.mark.parametrize("size, pooled", [(2, 6), (6, 3), (4, 4), (3, 1), (2, 7), (5, 3)])
def test_adaptive_average_pooling_exports_exactly(size, pooled):
    """alexnet/vgg's AdaptiveAvgPool2d((6, 6)/(7, 7)) at any input: replicate, pool, keep, average, or
    PyTorch's overlapping windows (2 -> 7, 5 -> 3)."""
    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.pool = torch.nn.AdaptiveAvgPool2d(pooled)
            self.head = torch.nn.Linear(4 * pooled * pooled, 10)

        def forward(self, x):
            return self.head(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))

    model, x = calibrate(Pooled(), size, "8")
    proto, info = export_onnx(model, (3, size, size))
    report = validate_export(proto, info, model, _batches(x))
    assert report.ok, report.failures


def test_torchvision_handlers_name_real_objects():
    """The exporter finds torchvision's operators by qualified name: each name must still be one."""
    from torchvision.models.swin_transformer import _patch_merging_pad
    from torchvision.ops import StochasticDepth, stochastic_depth

    from proqha.export import ops

    assert {ops._qualified_name(o) for o in (StochasticDepth, stochastic_depth, _patch_merging_pad)} == set(ops.BY_NAME)


@pytest.mark.parametrize("task, name", [("segmentation", "lraspp_mobilenet_v3_large"),
                                        ("detection", "ssdlite320_mobilenet_v3_large")])
def test_dense_networks_export_exactly_layer_by_layer(task, name):
    """A torchvision segmenter (bilinear upsampling, attention by a pooled gate) and a detector's heads (shared
    per level, outputs concatenated): every conv in an int8 kernel, every quantized tensor within one step
    of PyTorch's when fed onnxruntime's input, and the zoo rules end to end."""
    model, x = (calibrated_segmenter if task == "segmentation" else calibrated_detector)(name, 64)
    proto, info = export_onnx(model, (3, 64, 64))
    report = validate_export(proto, info, model, _batches(x), reference=False)
    steps = per_layer_steps(model, proto, x)
    assert zoo_failures(report, info.all_layers, check_pair_sums(proto), logit_spread(model, x, info.output_scale),
                        noise_floor(model, x, info.output_scale), max(steps.values()), classes_predicted(model, x)) == []
    assert report.kernels.integer_layers == info.all_layers and max(steps.values()) <= 1 + 1e-4
