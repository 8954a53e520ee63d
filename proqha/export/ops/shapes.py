"""Handlers of shape operators (reshape, transpose, split, indexing, pad, roll, concat, expand) and of
tensor products (attention matmuls); every reshape keeps the batch dimension free."""

from __future__ import annotations

import numpy as np
import torch.fx as fx

from proqha.errors import ProqhaError
from proqha.export.ops.args import arg, axis_of, rank_of, x_of

# --- shapes -------------------------------------------------------------------------------------

def reshape_to(w, x: str, node: fx.Node, name: str) -> str:
    """Reshape to the node's propagated shape, the batch dimension left free (-1); with a dynamic height
    and width, every dimension that follows them read at run time from the input's dimension of the same
    sizes at both probe sizes (``dynamic_target``)."""
    shape = list(w.shape(node))
    if not shape or shape[0] != w.probe_batch:
        raise ProqhaError(f"cannot export reshape {node.name}: its output does not keep the batch dimension first")
    if w.varying_dims(node):
        return w.b.node("Reshape", [x, dynamic_target(w, node, name)], name)
    return w.b.node("Reshape", [x, w.b.const(f"{name}.shape", np.array([-1, *shape[1:]], np.int64))], name)


def dynamic_target(w, node: fx.Node, name: str) -> str:
    """The target shape of a reshape whose output follows the input's height and width, built at run time:
    the batch and each such dimension taken from the reshaped tensor's shape (the dimension with the same
    sizes at both probes), the others as traced, and one that matches none (a flattened map) left to -1."""
    source = node.args[0]
    shape, other = w.shape(node), w.other_shapes[node][0]
    src_shape, src_other = w.shape(source), w.other_shapes[source][0]
    pieces, free = [], 0
    for i, (a, b) in enumerate(zip(shape, other)):
        if i == 0 or a != b:
            found = next((j for j, pair in enumerate(zip(src_shape, src_other)) if pair == (a, b) and (j == 0) == (i == 0)),
                         None)
            if found is not None:
                pieces.append(w.shape_of(w.env[source], f"{name}.dim{i}", found, found + 1))
                continue
            free += 1
            if free > 1:
                w.fixed_size(node, "reshape")
            a = -1
        pieces.append(w.b.const(f"{name}.dim{i}", np.array([a], np.int64)))
    return w.b.node("Concat", pieces, f"{name}.target", axis=0)


def reshape(w, node: fx.Node) -> str:
    """view/reshape/flatten: onnxruntime moves Q/DQ across Reshape, so integer tensors stay integer."""
    return reshape_to(w, x_of(w, node), node, w.base(node))


def transpose(w, node: fx.Node) -> str:
    rank = rank_of(w, node.args[0])
    if "permute" in (node.target, getattr(node.target, "__name__", None)):
        dims = node.args[1:] if len(node.args) > 2 else arg(node, 1, "dims")
        perm = [int(d) % rank for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
    else:
        a, b = arg(node, 1, "dim0") % rank, arg(node, 2, "dim1") % rank
        perm = list(range(rank))
        perm[a], perm[b] = perm[b], perm[a]
    return w.b.node("Transpose", [x_of(w, node)], w.base(node), perm=perm)


def chunk(w, node: fx.Node) -> list[str]:
    """chunk/split along one axis: a Split with one output per piece (getitem picks them)."""
    dim = axis_of(w, node.args[0], arg(node, 2, "dim", 0))
    if dim in w.varying_dims(node.args[0]):
        w.fixed_size(node, "split along a spatial axis", node.args[0])
    sizes = [s[dim] for s in w.shapes(node)]
    split = w.b.const(f"{w.base(node)}.split", np.array(sizes, np.int64))
    return w.b.multi("Split", [x_of(w, node), split], w.base(node), len(sizes), axis=dim)


def getitem(w, node: fx.Node) -> str:
    """A piece of chunk/split, or basic tensor indexing: ints and constant slices (x[:, 0], x[..., 1:])."""
    src, index = node.args
    value = w.env.get(src)
    if isinstance(value, list) and isinstance(index, int):
        return value[index]
    items = list(index) if isinstance(index, tuple) else [index]
    rank = rank_of(w, src)
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
    rank = rank_of(w, node.args[0])
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(amounts) // 2):
        begins[rank - 1 - i], ends[rank - 1 - i] = amounts[2 * i], amounts[2 * i + 1]
    if begins[0] or ends[0]:
        raise ProqhaError(f"cannot export pad {node.name}: it pads the batch dimension")
    pads = w.b.const(f"{w.base(node)}.pads", np.array(begins + ends, np.int64))
    return w.b.node("Pad", [x_of(w, node), pads], w.base(node))


def roll(w, node: fx.Node) -> str:
    """torch.roll by constant shifts along given dims: per dim, the two slices swapped (Slice, Concat)."""
    shifts, dims = arg(node, 1, "shifts"), arg(node, 2, "dims")
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    if len(shifts) != len(dims):
        raise ProqhaError(f"cannot export roll {node.name}: it needs one dim per shift")
    x, name, shape = x_of(w, node), w.base(node), w.shape(node)
    w.fixed_size(node, "roll")
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


def patch_merging_pad(w, node: fx.Node) -> str:
    """torchvision Swin's patch merging (..., H, W, C) -> (..., H/2, W/2, 4C): zero pad to even H and W,
    then the four strided 2x2 phases (rows, columns) = (0, 0), (1, 0), (0, 1), (1, 1) concatenated."""
    x, name, shape = x_of(w, node), w.base(node), w.shape(node.args[0])
    w.fixed_size(node, "patch merging", node.args[0])
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
    w.fixed_size(node, "expand")
    return w.b.node("Expand", [x_of(w, node), w.batch_shape(shape[1:], w.base(node))], w.base(node))


def matmul(w, node: fx.Node) -> str:
    """A tensor product (attention): onnxruntime runs it as QLinearMatMul between quantizers."""
    if w.quantized and all(w.on_grid(a) for a in node.args[:2]):
        w.info.matmuls += 1
    return w.b.node("MatMul", [w.kernel_input(a) for a in node.args[:2]], w.base(node))


def cat(w, node: fx.Node) -> str:
    tensors = arg(node, 0, "tensors")
    dim = axis_of(w, node, arg(node, 1, "dim", 0))
    return w.b.node("Concat", [w.env[t] for t in tensors], w.base(node), axis=dim)
