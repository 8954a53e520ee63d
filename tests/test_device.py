"""Device handling, mixed precision and memory format: nothing assumes the CPU, grids stay float32."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from proqha.cli.app import app
from proqha.models import create_model
from proqha.quant import (
    DoReFaWeightQuantizer,
    PACTQuantizer,
    SignedActQuantizer,
    WeightQuantizer,
    quant_layers,
    quantize_model,
)
from proqha.train import StepOptions, TrainConfig, make_loader, make_optimizer, train_one_epoch, train_run

runner = CliRunner()
NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize("cls", [PACTQuantizer, SignedActQuantizer, WeightQuantizer, DoReFaWeightQuantizer])
def test_quantizer_state_follows_the_module_to_another_device(cls):
    q = cls(4, channels=3) if cls is WeightQuantizer else cls(4)
    q.to("meta")
    tensors = list(q.parameters()) + list(q.buffers())
    assert tensors and all(t.device.type == "meta" for t in tensors)


def test_a_quantized_model_moves_whole():
    model = quantize_model(create_model("mobilenet_v2", num_classes=10)).to("meta")
    devices = {t.device.type for t in list(model.parameters()) + list(model.buffers())}
    assert devices == {"meta"}


@pytest.mark.gpu
@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
def test_cuda_training_step_keeps_everything_on_the_gpu():
    model = quantize_model(create_model("resnet20_post")).cuda()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    model(x).sum().backward()
    assert {p.device.type for p in model.parameters()} == {"cuda"}


def test_amp_bf16_leaves_the_grids_bit_identical():
    torch.manual_seed(0)
    model = quantize_model(create_model("digits_resnet"))
    x = torch.randn(32, 1, 8, 8)
    model.train()
    model(x)  # initialise ranges in float32
    layer = quant_layers(model)["layer1.0.conv2"]
    probe = torch.randn(4, 16, 8, 8).relu()
    plain = layer.input_quantizer(probe)
    seen = []
    layer.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = layer.input_quantizer(probe.bfloat16())
        out = model(x)
    assert seen == [torch.bfloat16]  # the conv (a float part) ran in bf16
    assert out.dtype == torch.float32  # the logits come out of their float32 quantizer
    assert mixed.dtype == torch.float32
    assert torch.equal(layer.input_quantizer(probe.bfloat16().float()), mixed)
    assert torch.equal(plain, layer.input_quantizer(probe))
    grid = layer.weight_quantizer.grid()
    assert grid.scale.dtype == torch.float32 and layer.weight_quantizer.alpha.dtype == torch.float32


def test_amp_bf16_and_channels_last_training_run(tmp_path):
    from proqha.recipe import load_model

    result = train_run(TrainConfig(epochs=2, batch_size=128, amp="bf16", channels_last=True).resolved(), tmp_path / "r")
    assert result["last"]["test_top1"] > 60
    model, _ = load_model(tmp_path / "r" / "checkpoints" / "last.pt")
    for layer in quant_layers(model).values():  # parameters and ranges stay float32 under AMP
        assert layer.weight.dtype == torch.float32 and layer.input_quantizer.alpha.dtype == torch.float32


def test_step_options_on_a_plain_loop():
    model = quantize_model(create_model("digits_resnet"))
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 8, 8), torch.arange(64) % 10)
    loader = make_loader(data, 32, shuffle=True, workers=2)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    seen = []
    conv.register_forward_hook(lambda m, args, out: seen.append((args[0].is_contiguous(memory_format=torch.channels_last),
                                                                 out.dtype)))
    opt = make_optimizer(model, "adam", 1e-3, 0.0)
    before = [p.detach().clone() for p in model.parameters()]
    for epoch in range(2):  # worker processes serve every sample in each epoch
        labels = torch.cat([y for _, y in loader])
        assert sorted(labels.tolist()) == sorted((torch.arange(64) % 10).tolist())
        row = train_one_epoch(model, loader, opt, None, torch.device("cpu"), epoch, options=StepOptions("bf16", True))
    assert seen and all(cl and dtype == torch.bfloat16 for cl, dtype in seen)  # channels_last input, bf16 conv
    assert row["train_top1"] >= 0 and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.slow
@pytest.mark.skipif(not NO_CUDA, reason="CUDA is present: the missing-CUDA path cannot run")
@pytest.mark.parametrize("args", [
    ["train", "--device", "cuda"],
    ["train", "--device", "cuda:1"],
    ["train", "--amp", "fp16"],
    ["search", "--device", "cuda"],
    ["export", "--device", "cuda"],
    ["bench", "--engine", "torch", "--device", "cuda"],
])
def test_cuda_without_cuda_is_one_line_exit_2(search_run, tmp_path, monkeypatch, args):
    monkeypatch.chdir(search_run.parent.parent)
    if args[0] == "search":
        args = [*args, "--from", str(search_run.parent / "train-1")]
    elif args[0] in ("export", "bench"):
        args = [args[0], str(search_run), *args[1:]]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and ("CUDA" in lines[0] or "cuda" in lines[0])


@pytest.mark.slow
def test_device_cpu_everywhere(search_run):
    for args in (["export", str(search_run), "--device", "cpu", "--out", str(search_run / "cpu.onnx"),
                  "--samples", "32"],
                 ["bench", str(search_run), "--engine", "torch", "--device", "cpu", "--batch", "2", "--iters", "3",
                  "--samples", "32"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
