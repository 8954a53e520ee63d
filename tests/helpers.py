"""Helpers the tests share: small calibrated models and bit configurations (no downloads)."""

from __future__ import annotations

import itertools

import torch
from torch.utils.data import DataLoader, TensorDataset

from proqha.models import create_model
from proqha.quant import BitConfig, DoReFaWeightQuantizer, QuantConfig, quant_layers, quantize_model, searchable_layers


def calibrate_bn(model: torch.nn.Module, x: torch.Tensor, passes: int = 2) -> torch.nn.Module:
    """Give BatchNorm realistic running statistics so an eval-mode random model has sane outputs."""
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(x)
    return model.eval()


def configure_bits(model, config: str) -> None:
    """uniform N, or "mixed": every searchable knob cycles through 2..8 (2..7 for DoReFa)."""
    bits = BitConfig.from_model(model).to_dict()
    dorefa = any(isinstance(m.weight_quantizer, DoReFaWeightQuantizer) for m in quant_layers(model).values())
    cycle = itertools.cycle(range(2, 8 if dorefa else 9))
    for name in searchable_layers(model):
        if config == "mixed":
            bits[name] = {"w": next(cycle), "a": next(cycle)}
        else:
            bits[name] = {"w": int(config), "a": int(config)}
    BitConfig(bits).apply(model)


def random_cifar(weights: str, int8_kernels: str = "portable") -> tuple[torch.nn.Module, DataLoader]:
    torch.manual_seed(0)
    x = torch.randn(96, 3, 32, 32)
    float_model = create_model("resnet20_post")
    with torch.no_grad():  # spread the random logits over many output steps, so top-1 is rarely a tie
        float_model.fc.weight.mul_(20)
    model = quantize_model(float_model, QuantConfig(weight_quantizer=weights, int8_kernels=int8_kernels))
    calibrate_bn(model, x[:32])  # BN statistics and quantizer ranges from data, then eval
    return model, DataLoader(TensorDataset(x[32:], torch.randint(0, 10, (64,))), batch_size=32)


def calibrated_resnet20(bits: int = 4) -> torch.nn.Module:
    """A quantized CIFAR-shape ResNet-20 with random weights, BN statistics and ranges set on 8 images, in eval."""
    torch.manual_seed(0)
    model = quantize_model(create_model("resnet20_post"), QuantConfig(bits=bits))
    return calibrate_bn(model, torch.randn(8, 3, 32, 32), passes=1)


def per_layer_steps(model: torch.nn.Module, proto, x: torch.Tensor) -> dict[str, float]:
    """Parity where it means something on any network: every quantized tensor of ``proto``'s graph as
    onnxruntime computes it, against what PyTorch computes for the same tensor from onnxruntime's own
    values of the tensors before it (each layer fed the runtime's input). Returns the largest difference
    per quantizer, in its output steps: a bound on one layer's arithmetic, with no cascade of ties
    through a deep (random) net. The integer tensors are read as extra graph outputs, which keeps
    onnxruntime's integer kernels (their uint8 outputs are the tensors themselves)."""
    import numpy as np
    import onnx
    import torch.fx as fx
    from onnx import helper, numpy_helper

    from proqha.export.ort_session import ort_session
    from proqha.quant import QuantAdd, Quantizer, QuantLayer

    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    grids = {}  # quantizer base name -> (integer tensor, scale, zero point)
    for n in proto.graph.node:
        src = producers.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if src is not None and src.op_type in ("QuantizeLinear", "Clip") and n.input[1] in inits:
            base = n.name.removesuffix(".dq")
            zp = inits[n.input[2]].astype(np.int64) if len(n.input) > 2 else 0
            grids[base] = (n.input[0], float(inits[n.input[1]]), zp)
    extended = onnx.ModelProto()
    extended.CopyFrom(proto)
    for tensor, _, _ in grids.values():
        extended.graph.output.append(helper.make_tensor_value_info(tensor, onnx.TensorProto.UINT8, None))
    names = [o.name for o in extended.graph.output]
    outs = dict(zip(names, ort_session(extended.SerializeToString()).run(None, {"input": x.numpy()})))
    runtime = {base: torch.from_numpy((outs[t].astype(np.int64) - zp) * np.float32(s)).float()
               for base, (t, s, zp) in grids.items()}
    steps: dict[str, float] = {}

    def take(base: str, ours: torch.Tensor) -> torch.Tensor:
        if base not in runtime:
            return ours
        steps[base] = float((ours - runtime[base]).abs().max()) / grids[base][1]
        return runtime[base]

    class FedByRuntime(fx.Interpreter):
        def call_module(self, target, args, kwargs):
            mod = self.fetch_attr(target)
            if isinstance(mod, QuantLayer):
                return mod(take(f"{target}.input", mod.input_quantizer(args[0])))
            result = super().call_module(target, args, kwargs)
            if isinstance(mod, QuantAdd):
                return take(f"{target}.output", result)
            return take(target, result) if isinstance(mod, Quantizer) else result

    model.eval()
    with torch.no_grad():
        FedByRuntime(model).run(x)
    return steps
