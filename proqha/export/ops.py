"""ONNX handlers for the float operators between quantized layers: one handler per module type, per
function and per tensor method, looked up in three tables (and torchvision's by qualified name, ``BY_NAME``).

A handler gets the writer (``proqha.export.onnx_export._Writer``: its GraphBuilder ``b``, the tensor
names ``env`` of the nodes written so far, ``shape(node)`` from shape propagation) and the fx node, and
returns the name of the tensor it wrote (a list of names for several outputs), or the input's name for
an operator that is the identity at inference. These operators run in float between a
DequantizeLinear and the next QuantizeLinear (onnxruntime runs a few, e.g. pooling and Concat, on
integers where the grids allow); every conv and linear is written by the writer itself.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from proqha.errors import ProqhaError

Handler = Callable[[Any, fx.Node], "str | list[str]"]


def pair(v: Any) -> list[int]:
    """An int or a 2-sequence as a list of two ints."""
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Positional argument ``index`` of a call, or its keyword ``name``."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _x(w, node: fx.Node) -> str:
    return w.env[node.args[0]]


def _rank(w, node: Any) -> int:
    return len(w.shape(node))


def _axis(w, node: fx.Node, dim: int) -> int:
    return dim % _rank(w, node)


# --- activations --------------------------------------------------------------------------------

def relu(w, node: fx.Node) -> str:
    return w.b.node("Relu", [_x(w, node)], w.base(node))


def relu6(w, node: fx.Node) -> str:
    return clip(w, _x(w, node), 0.0, 6.0, w.base(node))


def clip(w, x: str, lo: float, hi: float, name: str) -> str:
    low = w.b.const(f"{name}.min", np.array(lo, np.float32))
    high = w.b.const(f"{name}.max", np.array(hi, np.float32))
    return w.b.node("Clip", [x, low, high], name)


def sigmoid(w, node: fx.Node) -> str:
    return w.b.node("Sigmoid", [_x(w, node)], w.base(node))


def tanh(w, node: fx.Node) -> str:
    return w.b.node("Tanh", [_x(w, node)], w.base(node))


def silu(w, node: fx.Node) -> str:
    x, name = _x(w, node), w.base(node)
    return w.b.node("Mul", [x, w.b.node("Sigmoid", [x], f"{name}.sigmoid")], name)


def hardsigmoid(w, node: fx.Node) -> str:
    return w.b.node("HardSigmoid", [_x(w, node)], w.base(node), alpha=1.0 / 6.0, beta=0.5)


def hardswish(w, node: fx.Node) -> str:
    return w.b.node("HardSwish", [_x(w, node)], w.base(node))


def gelu(w, node: fx.Node) -> str:
    """GELU from opset-19 operators: 0.5 x (1 + erf(x / sqrt 2)), or the tanh approximation."""
    x, name = _x(w, node), w.base(node)
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
    x, name = _x(w, node), w.base(node)
    axes = w.b.const(f"{name}.axes", np.array([_axis(w, node, arg(node, 1, "dim", -1))], np.int64))
    peak = w.b.node("ReduceMax", [x, axes], f"{name}.max", keepdims=1)
    e = w.b.node("Exp", [w.b.node("Sub", [x, peak], f"{name}.shifted")], f"{name}.exp")
    return w.b.node("Div", [e, w.b.node("ReduceSum", [e, axes], f"{name}.sum", keepdims=1)], name)


# --- normalisation ------------------------------------------------------------------------------

def batch_norm(w, node: fx.Node) -> str:
    mod, name = w.modules[node.target], w.base(node)
    return w.b.node("BatchNormalization", [_x(w, node), w.const(f"{name}.gamma", mod.weight),
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
    return _layer_norm(w, _x(w, node), name, mod.normalized_shape, weight, bias, mod.eps)


def layer_norm_function(w, node: fx.Node) -> str:
    return _layer_norm(w, _x(w, node), w.base(node), arg(node, 1, "normalized_shape"),
                       w.value(arg(node, 2, "weight")), w.value(arg(node, 3, "bias")), arg(node, 4, "eps", 1e-5))


# --- pooling ------------------------------------------------------------------------------------

def _pool(w, op: str, x: str, name: str, kernel: Any, stride: Any, padding: Any, ceil: bool,
          count_include_pad: bool = True) -> str:
    ph, pw = pair(padding)
    attrs = {"kernel_shape": pair(kernel), "strides": pair(stride if stride else kernel),
             "pads": [ph, pw, ph, pw], "ceil_mode": int(bool(ceil))}
    if op == "AveragePool":
        attrs["count_include_pad"] = int(bool(count_include_pad))
    return w.b.node(op, [x], name, **attrs)


def pool_module(w, node: fx.Node) -> str:
    mod = w.modules[node.target]
    if getattr(mod, "dilation", 1) not in (1, (1, 1)):
        raise ProqhaError(f"{node.target}: dilated pooling cannot be exported")
    op = "MaxPool" if isinstance(mod, nn.MaxPool2d) else "AveragePool"
    return _pool(w, op, _x(w, node), w.base(node), mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode,
                 getattr(mod, "count_include_pad", True))


def pool_function(w, node: fx.Node) -> str:
    kernel = arg(node, 1, "kernel_size")
    if node.target is F.max_pool2d:
        return _pool(w, "MaxPool", _x(w, node), w.base(node), kernel, arg(node, 2, "stride") or kernel,
                     arg(node, 3, "padding", 0), bool(arg(node, 5, "ceil_mode", False)))
    return _pool(w, "AveragePool", _x(w, node), w.base(node), kernel, arg(node, 2, "stride") or kernel,
                 arg(node, 3, "padding", 0), bool(arg(node, 4, "ceil_mode", False)),
                 bool(arg(node, 5, "count_include_pad", True)))


def global_pool(w, node: fx.Node) -> str:
    """Adaptive average pooling at the traced input size: 1x1 as GlobalAveragePool; an output that divides
    the input as AveragePool (kernel = stride = input / output); one the input divides (a 1x1 map to
    6x6, alexnet and vgg at small inputs) as nearest-neighbour Resize, each cell repeated; any other as
    PyTorch defines it, one axis at a time: output cell i averages input rows floor(i*H/h) to
    ceil((i+1)*H/h) (Slice and ReduceMean per cell, then Concat)."""
    size = w.modules[node.target].output_size if node.op == "call_module" else arg(node, 1, "output_size")
    in_hw = list(w.shape(node.args[0])[-2:])
    out_hw = [i if o is None else o for i, o in zip(in_hw, pair(size))]
    x, name = _x(w, node), w.base(node)
    if out_hw == [1, 1]:
        return w.b.node("GlobalAveragePool", [x], name)
    if out_hw == in_hw:
        return x
    if all(i % o == 0 for i, o in zip(in_hw, out_hw)):
        kernel = [i // o for i, o in zip(in_hw, out_hw)]
        return w.b.node("AveragePool", [x], name, kernel_shape=kernel, strides=kernel)
    if all(o % i == 0 for i, o in zip(in_hw, out_hw)):
        scales = w.b.const(f"{name}.scales", np.array([1, 1] + [o / i for i, o in zip(in_hw, out_hw)], np.float32))
        return w.b.node("Resize", [x, "", scales], name, mode="nearest",
                        coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    rank = _rank(w, node.args[0])
    for axis, (n_in, n_out) in zip((rank - 2, rank - 1), zip(in_hw, out_hw)):
        if n_in == n_out:
            continue
        axes = w.b.const(f"{name}.axis{axis}", np.array([axis], np.int64))
        cells = []
        for i in range(n_out):
            lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
            bounds = [w.b.const(f"{name}.{k}{axis}_{i}", np.array([v], np.int64)) for k, v in (("lo", lo), ("hi", hi))]
            window = w.b.node("Slice", [x, *bounds, axes], f"{name}.window{axis}_{i}")
            cells.append(w.b.node("ReduceMean", [window, axes], f"{name}.cell{axis}_{i}", keepdims=1))
        x = w.b.node("Concat", cells, f"{name}.axis{axis}", axis=axis)
    return x


def mean(w, node: fx.Node) -> str:
    """The spatial mean of NCHW as GlobalAveragePool (onnxruntime keeps it on integers); any other mean
    as ReduceMean."""
    dims = arg(node, 1, "dim", ())
    rank = _rank(w, node.args[0])
    dims = sorted(d % rank for d in ([dims] if isinstance(dims, int) else list(dims)))
    keep = bool(arg(node, 2, "keepdim", False))
    if not dims:
        raise ProqhaError(f"cannot export mean over every dim (node {node.name}): it reduces the batch")
    if dims == [2, 3] and rank == 4:
        y = w.b.node("GlobalAveragePool", [_x(w, node)], w.base(node))
        return y if keep else w.b.node("Flatten", [y], f"{w.base(node)}.flatten", axis=1)
    axes = w.b.const(f"{w.base(node)}.axes", np.array(dims, np.int64))
    return w.b.node("ReduceMean", [_x(w, node), axes], w.base(node), keepdims=int(keep))


# --- shapes -------------------------------------------------------------------------------------

def reshape_to(w, x: str, node: fx.Node, name: str) -> str:
    """Reshape to the node's propagated shape, the batch dimension left free (-1)."""
    shape = list(w.shape(node))
    if not shape or shape[0] != w.probe_batch:
        raise ProqhaError(f"cannot export reshape {node.name}: its output does not keep the batch dimension first")
    target = w.b.const(f"{name}.shape", np.array([-1, *shape[1:]], np.int64))
    return w.b.node("Reshape", [x, target], name)


def reshape(w, node: fx.Node) -> str:
    """view/reshape/flatten: onnxruntime moves Q/DQ across Reshape, so integer tensors stay integer."""
    return reshape_to(w, _x(w, node), node, w.base(node))


def transpose(w, node: fx.Node) -> str:
    rank = _rank(w, node.args[0])
    if "permute" in (node.target, getattr(node.target, "__name__", None)):
        dims = node.args[1:] if len(node.args) > 2 else arg(node, 1, "dims")
        perm = [int(d) % rank for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
    else:
        a, b = arg(node, 1, "dim0") % rank, arg(node, 2, "dim1") % rank
        perm = list(range(rank))
        perm[a], perm[b] = perm[b], perm[a]
    return w.b.node("Transpose", [_x(w, node)], w.base(node), perm=perm)


def chunk(w, node: fx.Node) -> list[str]:
    """chunk/split along one axis: a Split with one output per piece (getitem picks them)."""
    dim = _axis(w, node.args[0], arg(node, 2, "dim", 0))
    sizes = [s[dim] for s in w.shapes(node)]
    split = w.b.const(f"{w.base(node)}.split", np.array(sizes, np.int64))
    return w.b.multi("Split", [_x(w, node), split], w.base(node), len(sizes), axis=dim)


def getitem(w, node: fx.Node) -> str:
    """A piece of chunk/split, or basic tensor indexing: ints and constant slices (x[:, 0], x[..., 1:])."""
    src, index = node.args
    value = w.env.get(src)
    if isinstance(value, list) and isinstance(index, int):
        return value[index]
    items = list(index) if isinstance(index, tuple) else [index]
    rank = _rank(w, src)
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at:at + 1] = [slice(None)] * (rank - len(items) + 1)
    if not isinstance(value, str) or len(items) > rank or not all(
            isinstance(i, int) or (isinstance(i, slice) and all(isinstance(v, (int, type(None)))
                                                               for v in (i.start, i.stop, i.step))) for i in items):
        raise ProqhaError(f"cannot export indexing {node.name} (only ints and constant slices)")
    name, axis = w.base(node), 0
    for pos, item in enumerate(items):
        if isinstance(item, int):
            if axis == 0:
                raise ProqhaError(f"cannot export indexing {node.name}: it drops the batch dimension")
            index_const = w.b.const(f"{name}.index{pos}", np.array(item, np.int64))
            value = w.b.node("Gather", [value, index_const], f"{name}.gather{pos}", axis=axis)
            continue
        if item != slice(None):
            if axis == 0:
                raise ProqhaError(f"cannot export indexing {node.name}: it slices the batch dimension")
            start, stop, step = item.start or 0, item.stop if item.stop is not None else 2**62, item.step or 1
            consts = [w.b.const(f"{name}.{k}{pos}", np.array([v], np.int64))
                      for k, v in (("start", start), ("stop", stop), ("axis", axis), ("step", step))]
            value = w.b.node("Slice", [value, *consts], f"{name}.slice{pos}")
        axis += 1
    return value


def pad(w, node: fx.Node) -> str:
    """F.pad with zeros (constant mode): ONNX Pad, its (last dim first) pairs turned into begins and ends."""
    amounts = list(arg(node, 1, "pad"))
    if arg(node, 2, "mode", "constant") != "constant" or arg(node, 3, "value", None) not in (None, 0, 0.0):
        raise ProqhaError(f"cannot export pad {node.name}: only zero padding")
    rank = _rank(w, node.args[0])
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(amounts) // 2):
        begins[rank - 1 - i], ends[rank - 1 - i] = amounts[2 * i], amounts[2 * i + 1]
    if begins[0] or ends[0]:
        raise ProqhaError(f"cannot export pad {node.name}: it pads the batch dimension")
    pads = w.b.const(f"{w.base(node)}.pads", np.array(begins + ends, np.int64))
    return w.b.node("Pad", [_x(w, node), pads], w.base(node))


def roll(w, node: fx.Node) -> str:
    """torch.roll by constant shifts along given dims: per dim, the two slices swapped (Slice, Concat)."""
    shifts, dims = arg(node, 1, "shifts"), arg(node, 2, "dims")
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    if len(shifts) != len(dims):
        raise ProqhaError(f"cannot export roll {node.name}: it needs one dim per shift")
    x, name, shape = _x(w, node), w.base(node), w.shape(node)
    for shift, dim in zip(shifts, dims):
        dim = dim % len(shape)
        cut = (-shift) % shape[dim]
        if cut == 0:
            continue
        start, at, end, axis = (w.b.const(f"{name}.{key}{dim}", np.array([v], np.int64))
                                 for key, v in (("start", 0), ("cut", cut), ("end", 2**62), ("axis", dim)))
        head = w.b.node("Slice", [x, start, at, axis], f"{name}.head{dim}")
        tail = w.b.node("Slice", [x, at, end, axis], f"{name}.tail{dim}")
        x = w.b.node("Concat", [tail, head], f"{name}.dim{dim}", axis=dim)
    return x


def normalize(w, node: fx.Node) -> str:
    """F.normalize: x / max(||x||_p, eps) along one dim (p = 2)."""
    if arg(node, 1, "p", 2.0) != 2:
        raise ProqhaError(f"cannot export normalize {node.name}: only p=2")
    x, name = _x(w, node), w.base(node)
    axes = w.b.const(f"{name}.axes", np.array([_axis(w, node, arg(node, 2, "dim", 1))], np.int64))
    norm = w.b.node("ReduceL2", [x, axes], f"{name}.norm", keepdims=1)
    eps = w.b.const(f"{name}.eps", np.array(arg(node, 3, "eps", 1e-12), np.float32))
    return w.b.node("Div", [x, w.b.node("Max", [norm, eps], f"{name}.floor")], name)


def patch_merging_pad(w, node: fx.Node) -> str:
    """torchvision Swin's patch merging (..., H, W, C) -> (..., H/2, W/2, 4C): zero pad to even H and W,
    then the four strided 2x2 phases (rows, columns) = (0, 0), (1, 0), (0, 1), (1, 1) concatenated."""
    x, name, shape = _x(w, node), w.base(node), w.shape(node.args[0])
    rank, (h, wd) = len(shape), shape[-3:-1]
    if h % 2 or wd % 2:
        ends = [0] * rank
        ends[rank - 3], ends[rank - 2] = h % 2, wd % 2
        x = w.b.node("Pad", [x, w.b.const(f"{name}.pads", np.array([0] * rank + ends, np.int64))], f"{name}.pad")
    axes = w.b.const(f"{name}.axes", np.array([rank - 3, rank - 2], np.int64))
    steps = w.b.const(f"{name}.steps", np.array([2, 2], np.int64))
    ends = w.b.const(f"{name}.ends", np.array([2**62, 2**62], np.int64))
    phases = [w.b.node("Slice", [x, w.b.const(f"{name}.starts{r}{c}", np.array([r, c], np.int64)), ends, axes, steps],
                       f"{name}.phase{r}{c}") for r, c in ((0, 0), (1, 0), (0, 1), (1, 1))]
    return w.b.node("Concat", phases, name, axis=rank - 1)


def expand(w, node: fx.Node) -> str:
    """x.expand(batch, ...) of a parameter (a class token): Expand to the propagated shape, batch free."""
    shape = list(w.shape(node))
    if shape[0] != w.probe_batch:
        raise ProqhaError(f"cannot export expand {node.name}: its output does not keep the batch dimension first")
    return w.b.node("Expand", [_x(w, node), w.batch_shape(shape[1:], w.base(node))], w.base(node))


def matmul(w, node: fx.Node) -> str:
    """A tensor product (attention): onnxruntime runs it as QLinearMatMul between quantizers."""
    if w.quantized and all(w.on_grid(a) for a in node.args[:2]):
        w.info.matmuls += 1
    return w.b.node("MatMul", [w.kernel_input(a) for a in node.args[:2]], w.base(node))


def cat(w, node: fx.Node) -> str:
    tensors = arg(node, 0, "tensors")
    dim = _axis(w, node, arg(node, 1, "dim", 0))
    return w.b.node("Concat", [w.env[t] for t in tensors], w.base(node), axis=dim)


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
    return _x(w, node)


MODULE_OPS: dict[type, Handler] = {
    nn.ReLU: relu, nn.ReLU6: relu6, nn.Sigmoid: sigmoid, nn.Tanh: tanh, nn.SiLU: silu,
    nn.Hardsigmoid: hardsigmoid, nn.Hardswish: hardswish, nn.GELU: gelu, nn.Softmax: softmax,
    nn.BatchNorm2d: batch_norm, nn.LayerNorm: layer_norm_module,
    nn.MaxPool2d: pool_module, nn.AvgPool2d: pool_module, nn.AdaptiveAvgPool2d: global_pool,
    nn.Flatten: reshape, nn.Identity: identity, nn.Dropout: identity,
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
    F.normalize: normalize,
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
