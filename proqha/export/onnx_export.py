"""The QDQ ONNX writer: built from the quantized modules' declared grids, walking the model's fx graph.

Each fx node has one handler (a table per node kind). Convs absorb the BatchNorm that follows them
(per-channel scales absorb it; the trained integers stay), weights are int8 initializers holding the
trained integers, activations are Q/DQ pairs with the trained scales (``qdq`` decides how per profile),
and biases are int32. ``quantized=False`` writes the float graph of the same model (no Q/DQ; the weights
at their quantized values), the latency baseline.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from proqha.errors import ProqhaError
from proqha.export import qdq
from proqha.export.graph_builder import GraphBuilder
from proqha.quant import PACTQuantizer, QuantAdd, QuantConv2d, QuantLinear, Quantizer
from proqha.quant.fold import float_layer, integer_layer
from proqha.quant.grid import pair_sum_fits_int16, uint8_activation_max

OPSET = 19  # per-axis Q/DQ, integer Clip, and the ONNX reference evaluator's Q/DQ
INT8_KERNELS = ("portable", "vnni")
EXACT_ON = {"portable": "every CPU (x86 with or without VNNI, ARM64)",
            "vnni": "CPUs whose int8 kernels sum in int32: x86 with AVX512-VNNI, AVX-VNNI or AMX; ARM64"}
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass
class LayerExport:
    """What was written for one conv/linear: its integer weight initializer (int8, or uint8 at zero point
    128 where int8 pair sums could pass int16), the factor its trained integers were multiplied by, and
    the range those integers must stay in."""

    kind: str
    w_bits: int
    a_bits: int
    initializer: str | None
    qmin: int
    qmax: int
    odd_levels: bool
    bn_folded: bool
    int_factor: int = 1
    weight_zero_point: int = 0
    act_max: int = 0  # the largest uint8 value its input takes in an integer kernel


@dataclass
class ExportInfo:
    """Facts about an exported graph that validation checks against."""

    profile: str
    quantized: bool
    int8_kernels: str = "portable"
    layers: dict[str, LayerExport] = field(default_factory=dict)
    quant_adds: int = 0
    output_scale: float | None = None

    @property
    def integer_layers(self) -> int:
        return sum(1 for layer in self.layers.values() if layer.initializer and layer.a_bits != 32)


def _pair(v: Any) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


class _Writer:
    def __init__(self, model: fx.GraphModule, profile: str, quantized: bool, int8_kernels: str) -> None:
        self.model, self.profile, self.quantized = model, profile, quantized
        self.modules = dict(model.named_modules())
        self.b = GraphBuilder()
        self.env: dict[fx.Node, str] = {}
        self.info = ExportInfo(profile, quantized, int8_kernels)
        self.scales: dict[str, float] = {}  # emitted activation step of a tensor name

    # -- helpers ----------------------------------------------------------------------------------
    def act(self, x: str, quantizer: nn.Module, base: str) -> str:
        if not self.quantized or not isinstance(quantizer, Quantizer) or not quantizer.enabled:
            if isinstance(quantizer, PACTQuantizer) and quantizer.absorbs_relu:  # the ReLU it stands in for
                return self.b.node("Relu", [x], f"{base}.relu")
            return x
        out, scale = qdq.activation(self.b, x, quantizer.grid(), self.profile, base)
        self.scales[out] = scale
        return out

    def const(self, base: str, t: torch.Tensor) -> str:
        return self.b.const(base, t.detach().cpu().numpy().astype(np.float32))

    def folded_bn(self, node: fx.Node) -> nn.BatchNorm2d | None:
        """The BatchNorm this conv absorbs: its only user."""
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(self.modules[users[0].target], nn.BatchNorm2d):
            return self.modules[users[0].target]
        return None

    # -- conv / linear ----------------------------------------------------------------------------
    def layer(self, node: fx.Node, layer: QuantConv2d | QuantLinear) -> str:
        name = node.target
        x = self.act(self.env[node.args[0]], layer.input_quantizer, f"{name}.input")
        bn = self.folded_bn(node) if isinstance(layer, QuantConv2d) else None
        wq = layer.weight_quantizer
        record = LayerExport("conv" if isinstance(layer, QuantConv2d) else "linear", layer.w_bits, layer.a_bits,
                             None, 0, 0, False, bn is not None)
        b = None
        if self.quantized and wq.enabled and x in self.scales:
            grid = wq.grid()
            deployed = integer_layer(layer, bn)
            if deployed.ints.abs().max() > 127:
                raise ProqhaError(f"{name}: {type(wq).__name__} at {wq.bits} bit has levels up to "
                                  f"{int(deployed.ints.abs().max())}, beyond int8; export it at <= 7 bit")
            if self.profile == "trt" and abs(self.scales[x] - float(deployed.input_scale)) > 1e-12 * self.scales[x]:
                deployed = integer_layer(layer, bn, input_scale=self.scales[x])  # the trt re-gridded input
            record.act_max = uint8_activation_max(layer.input_quantizer.grid())
            wide = (self.profile == "ort" and self.info.int8_kernels == "portable"
                    and not pair_sum_fits_int16(record.act_max, deployed.int_factor * grid.qmax))
            w, record.initializer = qdq.weight(self.b, deployed.ints.cpu().numpy(), deployed.scale.cpu().numpy(),
                                               name, wide)
            record.weight_zero_point = qdq.WIDE_WEIGHT_ZERO_POINT if wide else 0
            record.qmin, record.qmax, record.odd_levels = grid.qmin, grid.qmax, grid.odd_levels
            record.int_factor = deployed.int_factor
            if deployed.bias_ints is not None and self.profile == "trt":  # TensorRT takes float biases
                b = self.const(f"{name}.bias", deployed.bias())
            elif deployed.bias_ints is not None:
                b = qdq.bias(self.b, deployed.bias_ints.cpu().numpy(), deployed.bias_scale.cpu().numpy(), name)
        else:
            wf, bias = float_layer(layer, bn)
            w = self.const(f"{name}.weight", wf)
            if bias is not None:
                b = self.const(f"{name}.bias", bias)
        self.info.layers[name] = record
        inputs = [x, w] + ([b] if b is not None else [])
        if isinstance(layer, QuantLinear):
            y = self.b.node("Gemm", inputs, name, transB=1)
        else:
            if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
                raise ProqhaError(f"{name}: only numeric zero padding can be exported")
            ph, pw = _pair(layer.padding)
            y = self.b.node("Conv", inputs, name, kernel_shape=_pair(layer.kernel_size), strides=_pair(layer.stride),
                            pads=[ph, pw, ph, pw], dilations=_pair(layer.dilation), group=layer.groups)
        if bn is not None:
            self.env[next(iter(node.users))] = y
        return y

    # -- other modules ----------------------------------------------------------------------------
    def module(self, node: fx.Node) -> str | None:
        mod = self.modules[node.target]
        name = node.target
        x = self.env[node.args[0]] if node.args else None
        if isinstance(mod, (QuantConv2d, QuantLinear)):
            return self.layer(node, mod)
        if isinstance(mod, nn.BatchNorm2d):
            if node in self.env:  # folded into the conv before it
                return None
            return self.b.node("BatchNormalization", [x, self.const(f"{name}.gamma", mod.weight),
                                                      self.const(f"{name}.beta", mod.bias),
                                                      self.const(f"{name}.mean", mod.running_mean),
                                                      self.const(f"{name}.var", mod.running_var)],
                               name, epsilon=float(mod.eps))
        if isinstance(mod, QuantAdd):
            a = self.act(self.env[node.args[0]], mod.input_quantizer_a, f"{name}.input_a")
            c = self.act(self.env[node.args[1]], mod.input_quantizer_b, f"{name}.input_b")
            y = self.b.node("Add", [a, c], name)
            if mod.relu:
                y = self.b.node("Relu", [y], f"{name}.relu")
            if self.quantized and mod.output_quantizer.enabled:
                self.info.quant_adds += 1
            return self.act(y, mod.output_quantizer, f"{name}.output")
        if isinstance(mod, Quantizer):
            return self.act(x, mod, name)
        if isinstance(mod, nn.ReLU):
            return self.b.node("Relu", [x], name)
        if isinstance(mod, nn.ReLU6):
            return self.relu6(x, name)
        if isinstance(mod, (nn.Identity, nn.Dropout)):
            return x
        if isinstance(mod, nn.MaxPool2d):
            return self.pool("MaxPool", x, name, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode)
        if isinstance(mod, nn.AvgPool2d):
            return self.pool("AveragePool", x, name, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode)
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            return self.global_pool(x, mod.output_size, name)
        if isinstance(mod, nn.Flatten):
            return self.flatten(x, mod.start_dim, mod.end_dim, name)
        raise ProqhaError(f"cannot export module {name} ({type(mod).__name__})")

    def relu6(self, x: str, name: str) -> str:
        lo = self.b.const(f"{name}.min", np.array(0.0, np.float32))
        hi = self.b.const(f"{name}.max", np.array(6.0, np.float32))
        return self.b.node("Clip", [x, lo, hi], name)

    def pool(self, op: str, x: str, name: str, kernel: Any, stride: Any, padding: Any, ceil: bool) -> str:
        ph, pw = _pair(padding)
        attrs = {"kernel_shape": _pair(kernel), "strides": _pair(stride if stride else kernel),
                 "pads": [ph, pw, ph, pw], "ceil_mode": int(bool(ceil))}
        return self.b.node(op, [x], name, **attrs)

    def global_pool(self, x: str, size: Any, name: str) -> str:
        if _pair(size) != [1, 1]:
            raise ProqhaError(f"{name}: adaptive average pooling to {size} cannot be exported (only 1x1)")
        return self.b.node("GlobalAveragePool", [x], name)

    def flatten(self, x: str, start: int, end: int, name: str) -> str:
        if end != -1 or start not in (0, 1):
            raise ProqhaError(f"{name}: flatten({start}, {end}) cannot be exported")
        if start == 0:
            return self.b.node("Flatten", [x], name, axis=0)
        # Reshape rather than Flatten: onnxruntime moves Q/DQ across Reshape, so a pooled tensor
        # feeding a quantized linear keeps an integer GlobalAveragePool
        shape = self.b.const(f"{name}.shape", np.array([0, -1], np.int64))
        return self.b.node("Reshape", [x, shape], name)

    # -- functions and methods ----------------------------------------------------------------------
    def function(self, node: fx.Node) -> str:
        fn, name = node.target, node.name
        x = self.env.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        if fn in (operator.add, operator.iadd, torch.add):
            return self.b.node("Add", [self.env[node.args[0]], self.env[node.args[1]]], name)
        if fn in (F.relu, torch.relu):
            return self.b.node("Relu", [x], name)
        if fn is F.relu6:
            return self.relu6(x, name)
        if fn is torch.flatten:
            return self.flatten(x, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1), name)
        if fn is F.adaptive_avg_pool2d:
            return self.global_pool(x, _arg(node, 1, "output_size"), name)
        if fn is F.max_pool2d or fn is F.avg_pool2d:
            kernel = _arg(node, 1, "kernel_size")
            op = "MaxPool" if fn is F.max_pool2d else "AveragePool"
            return self.pool(op, x, name, kernel, _arg(node, 2, "stride") or kernel, _arg(node, 3, "padding", 0),
                             bool(_arg(node, 5 if op == "MaxPool" else 4, "ceil_mode", False)))
        if fn is F.dropout:
            return x
        raise ProqhaError(f"cannot export function {getattr(fn, '__name__', fn)} (node {name})")

    def method(self, node: fx.Node) -> str:
        x, name = self.env[node.args[0]], node.name
        if node.target == "flatten":
            return self.flatten(x, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1), name)
        if node.target in ("relu", "relu_"):
            return self.b.node("Relu", [x], name)
        if node.target == "contiguous":
            return x
        if node.target == "mean" and sorted(d % 4 for d in _arg(node, 1, "dim", ())) == [2, 3]:
            y = self.b.node("GlobalAveragePool", [x], name)
            return y if _arg(node, 2, "keepdim", False) else self.b.node("Flatten", [y], f"{name}.flatten", axis=1)
        raise ProqhaError(f"cannot export method .{node.target}() (node {name})")

    # -- the walk ---------------------------------------------------------------------------------
    def run(self, input_size: tuple[int, ...], output_size: tuple[int, ...], metadata: dict[str, str]
            ) -> onnx.ModelProto:
        handlers: dict[str, Callable[[fx.Node], str | None]] = {
            "call_module": self.module, "call_function": self.function, "call_method": self.method}
        out = None
        for node in self.model.graph.nodes:
            if node.op == "placeholder":
                self.env[node] = INPUT_NAME
            elif node.op == "output":
                out = self.env[node.args[0]]
                src = node.args[0]
                if src.op == "call_module" and isinstance(self.modules[src.target], Quantizer) and out in self.scales:
                    self.info.output_scale = self.scales[out]
            elif node.op in handlers:
                if node in self.env:  # already produced (a folded BatchNorm)
                    continue
                y = handlers[node.op](node)
                if y is not None:
                    self.env[node] = y
            else:
                raise ProqhaError(f"cannot export graph node {node.name} ({node.op})")
        self.b.nodes.append(onnx.helper.make_node("Identity", [out], [OUTPUT_NAME], name=OUTPUT_NAME))
        return self.b.model(INPUT_NAME, ["batch", *input_size], OUTPUT_NAME, ["batch", *output_size], OPSET,
                            metadata)


def check_int8_kernels(value: str) -> str:
    """``value`` if it names a graph form in ``INT8_KERNELS``, else ProqhaError (one line)."""
    if value not in INT8_KERNELS:
        raise ProqhaError(f"--int8-kernels must be one of {', '.join(INT8_KERNELS)}, got {value!r}")
    return value


@torch.no_grad()
def export_onnx(model: nn.Module, input_size: tuple[int, ...], profile: str = "ort", quantized: bool = True,
                metadata: dict[str, str] | None = None, int8_kernels: str = "portable"
                ) -> tuple[onnx.ModelProto, ExportInfo]:
    """Write ``model`` (a quantized twin from ``quantize_model``) as an ONNX graph.

    ``profile`` picks how activation grids are written (see ``proqha.export.qdq``); ``quantized=False``
    gives the float graph. Weights are stored as k times their trained integers at scale / k (k from
    ``weight_int_factor``: the same weights, a finer int32 bias grid, which the quantized layers round
    their bias to as well). ``int8_kernels="portable"`` (default) keeps every uint8 x int8 pair sum inside
    int16, storing uint8 weights where int8 ones could overflow, so the graph is exact on every CPU;
    ``"vnni"`` stores int8 weights everywhere, exact only where int8 kernels sum in int32 (``EXACT_ON``).
    The model is put in eval mode. Returns the model proto and what validation needs to know about it.
    """
    if profile not in qdq.PROFILES:
        raise ProqhaError(f"--profile must be one of {', '.join(qdq.PROFILES)}, got {profile!r}")
    check_int8_kernels(int8_kernels)
    if not isinstance(model, fx.GraphModule):
        raise ProqhaError("only models that torch.fx could trace can be exported (this one fell back to a module walk)")
    model = model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    output_size = tuple(model(torch.zeros(1, *input_size, device=device)).shape[1:])
    writer = _Writer(model, profile, quantized, int8_kernels)
    proto = writer.run(tuple(input_size), output_size, metadata or {})
    return proto, writer.info
