"""Handlers of pooling: max and average pools, adaptive average pooling at the traced size, and means."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from proqha.errors import ProqhaError
from proqha.export.ops.args import arg, pair, rank_of, x_of

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
    return _pool(w, op, x_of(w, node), w.base(node), mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode,
                 getattr(mod, "count_include_pad", True))


def pool_function(w, node: fx.Node) -> str:
    kernel = arg(node, 1, "kernel_size")
    if node.target is F.max_pool2d:
        return _pool(w, "MaxPool", x_of(w, node), w.base(node), kernel, arg(node, 2, "stride") or kernel,
                     arg(node, 3, "padding", 0), bool(arg(node, 5, "ceil_mode", False)))
    return _pool(w, "AveragePool", x_of(w, node), w.base(node), kernel, arg(node, 2, "stride") or kernel,
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
    x, name = x_of(w, node), w.base(node)
    if out_hw == [1, 1]:
        return w.b.node("GlobalAveragePool", [x], name)
    if w.varies(node.args[0]) and (w.shapes(node) != w.shapes(node.args[0])
                                   or w.other_shapes.get(node) != w.other_shapes.get(node.args[0])):
        w.fixed_size(node, "adaptive pooling to a size other than 1x1", node.args[0])  # kernels follow the size
    if out_hw == in_hw:
        return x
    if all(i % o == 0 for i, o in zip(in_hw, out_hw)):
        kernel = [i // o for i, o in zip(in_hw, out_hw)]
        return w.b.node("AveragePool", [x], name, kernel_shape=kernel, strides=kernel)
    if all(o % i == 0 for i, o in zip(in_hw, out_hw)):
        scales = w.b.const(f"{name}.scales", np.array([1, 1] + [o / i for i, o in zip(in_hw, out_hw)], np.float32))
        return w.b.node("Resize", [x, "", scales], name, mode="nearest",
                        coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    rank = rank_of(w, node.args[0])
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
    rank = rank_of(w, node.args[0])
    dims = sorted(d % rank for d in ([dims] if isinstance(dims, int) else list(dims)))
    keep = bool(arg(node, 2, "keepdim", False))
    if not dims:
        raise ProqhaError(f"cannot export mean over every dim (node {node.name}): it reduces the batch")
    if dims == [2, 3] and rank == 4:
        y = w.b.node("GlobalAveragePool", [x_of(w, node)], w.base(node))
        return y if keep else w.b.node("Flatten", [y], f"{w.base(node)}.flatten", axis=1)
    axes = w.b.const(f"{w.base(node)}.axes", np.array(dims, np.int64))
    return w.b.node("ReduceMean", [x_of(w, node), axes], w.base(node), keepdims=int(keep))
