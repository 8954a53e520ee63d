"""Handlers of elementwise float operators: activations, normalisation and arithmetic (ONNX opset 19)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch.fx as fx

from proqha.errors import ProqhaError
from proqha.export.ops.args import arg, axis_of, x_of

# --- activations --------------------------------------------------------------------------------

def relu(w, node: fx.Node) -> str:
    return w.b.node("Relu", [x_of(w, node)], w.base(node))


def relu6(w, node: fx.Node) -> str:
    return clip(w, x_of(w, node), 0.0, 6.0, w.base(node))


def clip(w, x: str, lo: float, hi: float, name: str) -> str:
    low = w.b.const(f"{name}.min", np.array(lo, np.float32))
    high = w.b.const(f"{name}.max", np.array(hi, np.float32))
    return w.b.node("Clip", [x, low, high], name)


def sigmoid(w, node: fx.Node) -> str:
    return w.b.node("Sigmoid", [x_of(w, node)], w.base(node))


def tanh(w, node: fx.Node) -> str:
    return w.b.node("Tanh", [x_of(w, node)], w.base(node))


def silu(w, node: fx.Node) -> str:
    x, name = x_of(w, node), w.base(node)
    return w.b.node("Mul", [x, w.b.node("Sigmoid", [x], f"{name}.sigmoid")], name)


def hardsigmoid(w, node: fx.Node) -> str:
    return w.b.node("HardSigmoid", [x_of(w, node)], w.base(node), alpha=1.0 / 6.0, beta=0.5)


def hardswish(w, node: fx.Node) -> str:
    return w.b.node("HardSwish", [x_of(w, node)], w.base(node))


def gelu(w, node: fx.Node) -> str:
    """GELU from opset-19 operators: 0.5 x (1 + erf(x / sqrt 2)), or the tanh approximation."""
    x, name = x_of(w, node), w.base(node)
    mod = w.modules.get(node.target) if node.op == "call_module" else None
    approximate = mod.approximate if mod is not None else arg(node, 1, "approximate", "none")
    c = lambda suffix, v: w.b.const(f"{name}.{suffix}", np.array(v, np.float32))  # noqa: E731
    if approximate == "tanh":
        cube = w.b.node("Mul", [x, w.b.node("Mul", [x, x], f"{name}.sq")], f"{name}.cube")
        inner = w.b.node("Add", [x, w.b.node("Mul", [cube, c("k", 0.044715)], f"{name}.kc")], f"{name}.inner")
        t = w.b.node("Tanh", [w.b.node("Mul", [inner, c("s", math.sqrt(2 / math.pi))], f"{name}.scaled")],
                     f"{name}.tanh")
    else:
        t = w.b.node("Erf", [w.b.node("Mul", [x, c("s", 1 / math.sqrt(2))], f"{name}.scaled")], f"{name}.erf")
    one_plus = w.b.node("Add", [t, c("one", 1.0)], f"{name}.one_plus")
    return w.b.node("Mul", [w.b.node("Mul", [x, one_plus], f"{name}.x"), c("half", 0.5)], name)


def softmax(w, node: fx.Node) -> str:
    """exp(x - max) / sum, written out: between a DequantizeLinear and a QuantizeLinear onnxruntime would
    replace a Softmax node with QLinearSoftmax, whose integer exp table approximates (measured: up to 10
    output steps off on a small ViT, where onnx.reference was exact)."""
    x, name = x_of(w, node), w.base(node)
    axes = w.b.const(f"{name}.axes", np.array([axis_of(w, node, arg(node, 1, "dim", -1))], np.int64))
    peak = w.b.node("ReduceMax", [x, axes], f"{name}.max", keepdims=1)
    e = w.b.node("Exp", [w.b.node("Sub", [x, peak], f"{name}.shifted")], f"{name}.exp")
    return w.b.node("Div", [e, w.b.node("ReduceSum", [e, axes], f"{name}.sum", keepdims=1)], name)


# --- normalisation ------------------------------------------------------------------------------

def batch_norm(w, node: fx.Node) -> str:
    mod, name = w.modules[node.target], w.base(node)
    return w.b.node("BatchNormalization", [x_of(w, node), w.const(f"{name}.gamma", mod.weight),
                                           w.const(f"{name}.beta", mod.bias),
                                           w.const(f"{name}.mean", mod.running_mean),
                                           w.const(f"{name}.var", mod.running_var)], name, epsilon=float(mod.eps))


def _layer_norm(w, x: str, name: str, shape: Any, weight: Any, bias: Any, eps: float) -> str:
    dims = len(shape) if isinstance(shape, (tuple, list)) else 1
    count = int(np.prod(shape))
    scale = weight if weight is not None else w.b.const(f"{name}.weight", np.ones(count, np.float32))
    shift = bias if bias is not None else w.b.const(f"{name}.bias", np.zeros(count, np.float32))
    return w.b.node("LayerNormalization", [x, scale, shift], name, axis=-dims, epsilon=float(eps))


def layer_norm_module(w, node: fx.Node) -> str:
    mod, name = w.modules[node.target], w.base(node)
    weight = w.const(f"{name}.gamma", mod.weight) if mod.weight is not None else None
    bias = w.const(f"{name}.beta", mod.bias) if mod.bias is not None else None
    return _layer_norm(w, x_of(w, node), name, mod.normalized_shape, weight, bias, mod.eps)


def layer_norm_function(w, node: fx.Node) -> str:
    return _layer_norm(w, x_of(w, node), w.base(node), arg(node, 1, "normalized_shape"),
                       w.value(arg(node, 2, "weight")), w.value(arg(node, 3, "bias")), arg(node, 4, "eps", 1e-5))


def group_norm(w, node: fx.Node) -> str:
    """nn.GroupNorm: per sample and group of channels, (x - mean) / sqrt(var + eps) (the biased variance, as
    PyTorch's), written out with the batch free (Reshape's 0 keeps it), then the per-channel affine."""
    mod, name, x = w.modules[node.target], w.base(node), x_of(w, node)
    shape = list(w.shape(node))
    grouped = w.b.node("Reshape", [x, w.b.const(f"{name}.groups", np.array([0, mod.num_groups, -1], np.int64))],
                       f"{name}.grouped")
    axes = w.b.const(f"{name}.axes", np.array([2], np.int64))
    mean = w.b.node("ReduceMean", [grouped, axes], f"{name}.mean", keepdims=1)
    centred = w.b.node("Sub", [grouped, mean], f"{name}.centred")
    var = w.b.node("ReduceMean", [w.b.node("Mul", [centred, centred], f"{name}.square"), axes], f"{name}.var",
                   keepdims=1)
    eps = w.b.const(f"{name}.eps", np.array(mod.eps, np.float32))
    normed = w.b.node("Div", [centred, w.b.node("Sqrt", [w.b.node("Add", [var, eps], f"{name}.var_eps")],
                                                 f"{name}.std")], f"{name}.normed")
    back = w.shape_of(x, f"{name}.in_shape") if w.varies(node) else w.b.const(
        f"{name}.shape", np.array([0, *shape[1:]], np.int64))
    y = w.b.node("Reshape", [normed, back], f"{name}.ungrouped")
    if not mod.affine:
        return y
    per_channel = [shape[1]] + [1] * (len(shape) - 2)
    gamma, beta = w.const(f"{name}.gamma", mod.weight.reshape(per_channel)), w.const(f"{name}.beta",
                                                                                   mod.bias.reshape(per_channel))
    return w.b.node("Add", [w.b.node("Mul", [y, gamma], f"{name}.scaled"), beta], name)


def normalize(w, node: fx.Node) -> str:
    """F.normalize: x / max(||x||_p, eps) along one dim (p = 2)."""
    if arg(node, 1, "p", 2.0) != 2:
        raise ProqhaError(f"cannot export normalize {node.name}: only p=2")
    x, name = x_of(w, node), w.base(node)
    axes = w.b.const(f"{name}.axes", np.array([axis_of(w, node, arg(node, 2, "dim", 1))], np.int64))
    norm = w.b.node("ReduceL2", [x, axes], f"{name}.norm", keepdims=1)
    eps = w.b.const(f"{name}.eps", np.array(arg(node, 3, "eps", 1e-12), np.float32))
    return w.b.node("Div", [x, w.b.node("Max", [norm, eps], f"{name}.floor")], name)


# --- arithmetic ---------------------------------------------------------------------------------

def mul(w, node: fx.Node) -> str:
    """Elementwise product: squeeze-excitation gating, layer scale (a parameter), a constant factor."""
    a, b = (w.value(v, f"{w.base(node)}.factor") for v in node.args[:2])
    return w.b.node("Mul", [a, b], w.base(node))


def add(w, node: fx.Node) -> str:
    a, b = (w.value(v, f"{w.base(node)}.term") for v in node.args[:2])
    return w.b.node("Add", [a, b], w.base(node))


def identity(w, node: fx.Node) -> str:
    """Operators that are the identity at inference: dropout, stochastic depth, contiguous."""
    return x_of(w, node)
