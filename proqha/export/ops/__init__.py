"""ONNX handlers for the float operators between quantized layers: one handler per module type, per
function and per tensor method, looked up in three tables (and torchvision's by qualified name, ``BY_NAME``); the handlers live in
``elementwise``, ``pooling``, ``resize`` and ``shapes``.

A handler gets the writer (``proqha.export.writer.GraphWriter``: its GraphBuilder ``b``, the tensor
names ``env`` of the nodes written so far, ``shape(node)`` from shape propagation) and the fx node, and
returns the name of the tensor it wrote (a list of names for several outputs), or the input's name for
an operator that is the identity at inference. These operators run in float between a
DequantizeLinear and the next QuantizeLinear (onnxruntime runs a few, e.g. pooling and Concat, on
integers where the grids allow); every conv and linear is written by the writer itself.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from proqha.export.ops.args import Handler, arg, pair
from proqha.export.ops.elementwise import (
    add,
    batch_norm,
    clip,
    gelu,
    group_norm,
    hardsigmoid,
    hardswish,
    identity,
    layer_norm_function,
    layer_norm_module,
    mul,
    normalize,
    relu,
    relu6,
    sigmoid,
    silu,
    softmax,
    tanh,
)
from proqha.export.ops.pooling import global_pool, mean, pool_function, pool_module
from proqha.export.ops.resize import interpolate, upsample
from proqha.export.ops.shapes import (
    cat,
    chunk,
    expand,
    getitem,
    matmul,
    pad,
    patch_merging_pad,
    reshape,
    reshape_to,
    roll,
    transpose,
)

__all__ = ["BY_NAME", "FUNCTION_OPS", "HINTS", "Handler", "METHOD_OPS", "MODULE_OPS", "arg", "clip", "function_handler",
           "module_handler", "pair", "reshape_to"]


MODULE_OPS: dict[type, Handler] = {
    nn.ReLU: relu, nn.ReLU6: relu6, nn.Sigmoid: sigmoid, nn.Tanh: tanh, nn.SiLU: silu,
    nn.Hardsigmoid: hardsigmoid, nn.Hardswish: hardswish, nn.GELU: gelu, nn.Softmax: softmax,
    nn.BatchNorm2d: batch_norm, nn.LayerNorm: layer_norm_module, nn.GroupNorm: group_norm,
    nn.MaxPool2d: pool_module, nn.AvgPool2d: pool_module, nn.AdaptiveAvgPool2d: global_pool,
    nn.Flatten: reshape, nn.Identity: identity, nn.Dropout: identity, nn.Upsample: upsample,
}
FUNCTION_OPS: dict[Any, Handler] = {
    F.relu: relu, torch.relu: relu, F.relu6: relu6, torch.sigmoid: sigmoid, F.sigmoid: sigmoid,
    torch.tanh: tanh, F.silu: silu, F.hardsigmoid: hardsigmoid, F.hardswish: hardswish, F.gelu: gelu,
    F.softmax: softmax, torch.softmax: softmax, F.layer_norm: layer_norm_function,
    F.max_pool2d: pool_function, F.avg_pool2d: pool_function, F.adaptive_avg_pool2d: global_pool,
    torch.flatten: reshape, torch.reshape: reshape, torch.permute: transpose, torch.transpose: transpose,
    torch.swapaxes: transpose, torch.chunk: chunk, torch.split: chunk, torch.cat: cat, torch.concat: cat,
    operator.getitem: getitem, operator.mul: mul, torch.mul: mul, operator.add: add, operator.iadd: add,
    torch.add: add, F.dropout: identity,
    torch.matmul: matmul, operator.matmul: matmul, torch.bmm: matmul, F.pad: pad, torch.roll: roll,
    F.normalize: normalize, F.interpolate: interpolate,
}
# torchvision's own, by qualified name: importing torchvision takes seconds, and only models that use them
# have imported it
BY_NAME: dict[str, Handler] = {
    "torchvision.ops.stochastic_depth.StochasticDepth": identity,
    "torchvision.ops.stochastic_depth.stochastic_depth": identity,
    "torchvision.models.swin_transformer._patch_merging_pad": patch_merging_pad,
}

HINTS = {  # what to do about a function the exporter refuses, by its name
    "shifted_window_attention": "window attention becomes traceable when the model is quantized with its input "
                                "size: quantize_model(model, config, input_size=(C, H, W))",
}

METHOD_OPS: dict[str, Handler] = {
    "relu": relu, "relu_": relu, "sigmoid": sigmoid, "flatten": reshape, "view": reshape, "reshape": reshape,
    "permute": transpose, "transpose": transpose, "chunk": chunk, "split": chunk, "contiguous": identity,
    "mean": mean, "mul": mul, "mul_": mul, "add": add, "add_": add, "softmax": softmax, "expand": expand,
    "matmul": matmul, "bmm": matmul,
}


def _qualified_name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"


def module_handler(mod: nn.Module) -> Handler | None:
    """The handler of a module type (or of its nearest base class in the tables)."""
    for cls in type(mod).__mro__:
        handler = MODULE_OPS.get(cls) or BY_NAME.get(_qualified_name(cls))
        if handler is not None:
            return handler
    return None


def function_handler(target: Any) -> Handler | None:
    """The handler of a called function (an fx ``call_function`` target)."""
    return FUNCTION_OPS.get(target) or BY_NAME.get(_qualified_name(target))
