"""Handlers of upsampling (``F.interpolate``, ``nn.Upsample``): one ONNX Resize whose coordinate rule is
PyTorch's, so the sampled positions are the same; it runs in float between a DequantizeLinear and the next
QuantizeLinear (nearest picks stored values, so its output stays on its input's grid; linear blends them)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.fx as fx

from proqha.errors import ProqhaError
from proqha.export.ops.args import arg, x_of

# PyTorch mode -> (ONNX mode, coordinate_transformation_mode, nearest_mode); align_corners picks the linear rule
NEAREST = {"nearest": ("nearest", "asymmetric", "floor"),  # src = floor(dst * in / out)
           "nearest-exact": ("nearest", "half_pixel", "round_prefer_ceil")}  # src = floor((dst + 0.5) * in / out)
LINEAR = ("linear", "bilinear", "trilinear")


def resize_attributes(mode: str, align_corners: bool | None, name: str) -> dict[str, Any]:
    """The ONNX Resize attributes that sample where ``F.interpolate(mode=, align_corners=)`` does."""
    if mode in NEAREST:
        onnx_mode, transform, nearest = NEAREST[mode]
        return {"mode": onnx_mode, "coordinate_transformation_mode": transform, "nearest_mode": nearest}
    if mode in LINEAR:  # pytorch_half_pixel: half-pixel centres, and source 0 for an output of length 1
        return {"mode": "linear", "coordinate_transformation_mode":
                "align_corners" if align_corners else "pytorch_half_pixel"}
    raise ProqhaError(f"cannot export interpolate {name}: mode {mode!r} (nearest, nearest-exact, linear, bilinear "
                      "and trilinear export)")


def resize(w, node: fx.Node, x: str, scale_factor: Any, mode: str, align_corners: bool | None,
           recompute_scale_factor: bool | None = None, antialias: bool = False) -> str:
    """A Resize to the node's propagated output size. A scale factor PyTorch samples by (given, not
    recomputed) is written as Resize's ``scales``, so the source positions are dst / factor as in PyTorch;
    otherwise the output size is written (batch from the input, the other sizes as traced)."""
    name = w.base(node)
    if antialias:
        raise ProqhaError(f"cannot export interpolate {name}: antialias=True")
    attrs = resize_attributes(mode, align_corners, name)
    shape_in, shape_out = w.shape(node.args[0]), w.shape(node)
    if scale_factor is not None and not recompute_scale_factor:
        factors = list(scale_factor) if isinstance(scale_factor, (tuple, list)) else [scale_factor] * (len(shape_in) - 2)
        scales = w.b.const(f"{name}.scales", np.array([1.0, 1.0, *map(float, factors)], np.float32))
        return w.b.node("Resize", [x, "", scales], name, **attrs)
    if w.varies(node):  # the size follows the input's: read it at run time from the tensor it was taken from
        spatial = len(shape_out) - 2
        source = size_source(w, node, spatial)
        if source is None:
            w.fixed_size(node, "interpolate")
        sizes = w.b.node("Concat", [w.shape_of(x, f"{name}.batch_channels", 0, 2),
                                    w.shape_of(w.env[source], f"{name}.size", -spatial)], f"{name}.sizes", axis=0)
        return w.b.node("Resize", [x, "", "", sizes], name, **attrs)
    sizes = w.batch_shape(list(shape_out[1:]), name)
    return w.b.node("Resize", [x, "", "", sizes], name, **attrs)


def size_source(w, node: fx.Node, spatial: int) -> fx.Node | None:
    """The tensor whose shape gave an upsampling its output size (``x.shape[-2:]``, ``feature.size()[2:]``):
    an ancestor of the size argument whose last ``spatial`` dimensions equal the output's at both probe
    sizes; None when there is none."""
    size = node.args[1] if len(node.args) > 1 else node.kwargs.get("size")
    want = [w.shape(node)[-spatial:], w.other_shapes[node][0][-spatial:]]
    stack = [a for a in (size if isinstance(size, (tuple, list)) else [size]) if isinstance(a, fx.Node)]
    seen: set[fx.Node] = set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.meta.get("tensor_meta") is not None and n in w.env and n in w.other_shapes and [
                w.shape(n)[-spatial:], w.other_shapes[n][0][-spatial:]] == want:
            return n
        stack.extend(n.all_input_nodes)
    return None


def interpolate(w, node: fx.Node) -> str:
    """F.interpolate(x, size=, scale_factor=, mode=, align_corners=, recompute_scale_factor=, antialias=)."""
    return resize(w, node, x_of(w, node), arg(node, 2, "scale_factor"), arg(node, 3, "mode", "nearest"),
                  arg(node, 4, "align_corners"), arg(node, 5, "recompute_scale_factor"), arg(node, 6, "antialias", False))


def upsample(w, node: fx.Node) -> str:
    """nn.Upsample / nn.UpsamplingNearest2d / nn.UpsamplingBilinear2d (their mode and align_corners)."""
    mod = w.modules[node.target]
    return resize(w, node, x_of(w, node), None if mod.size is not None else mod.scale_factor, mod.mode,
                  mod.align_corners, getattr(mod, "recompute_scale_factor", None))
