"""What a traced model's fx graph tells the converter, and the rewrites that need no quantizer.

Predicates over nodes (a ReLU, a non-negative tensor, a residual add, a matmul, a shape-only operator,
a value computed from parameters alone), the tracer that keeps train-dependent modules as calls, and
graph rewrites: dead code, and einsums that are batched matrix products.
"""

from __future__ import annotations

import operator
from typing import Any, Mapping

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from proqha.imports import loaded_attributes
from proqha.quant.layers import QuantAdd
from proqha.quant.quantizers import Quantizer

_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_PASS_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
                 nn.Dropout, nn.Identity)
_RELU_FUNCS = {F.relu, torch.relu, F.relu6}
_PASS_FUNCS = {torch.flatten, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
               F.dropout, torch.reshape}
_PASS_METHODS = {"view", "reshape", "flatten", "contiguous", "mean"}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_MATMUL_FUNCS = {torch.matmul, operator.matmul, torch.bmm}
_PROBABILITY_FUNCS = {F.softmax, torch.softmax, torch.sigmoid, F.sigmoid}  # outputs in [0, 1]
_SHAPE_PASS_FUNCS = {torch.reshape, torch.flatten, torch.transpose, torch.permute, torch.swapaxes,
                     operator.getitem, torch.chunk, torch.split}
_SHAPE_PASS_METHODS = {"view", "reshape", "flatten", "transpose", "permute", "contiguous", "chunk", "split"}
_SHAPE_METHODS = {"size", "dim", "numel"}


def is_relu(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _RELU_MODULES)
    if node.op == "call_function":
        return node.target in _RELU_FUNCS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def nonnegative(node: Any, modules: Mapping[str, nn.Module]) -> bool:
    """True when the tensor a node produces is >= 0 by construction (ReLU, or pooling/reshaping of one)."""
    if not isinstance(node, fx.Node):
        return False
    if is_relu(node, modules):
        return True
    first = node.args[0] if node.args else None
    if node.op == "call_module":
        mod = modules[node.target]
        if isinstance(mod, QuantAdd):
            return mod.relu
        if isinstance(mod, Quantizer):
            return not mod.signed
        return isinstance(mod, _PASS_MODULES) and nonnegative(first, modules)
    if node.op == "call_function":
        if node.target is torch.cat:
            return all(nonnegative(a, modules) for a in first)
        if node.target in _PROBABILITY_FUNCS:
            return True
        return node.target in _PASS_FUNCS | _SHAPE_PASS_FUNCS and nonnegative(first, modules)
    if node.op == "call_method":
        if node.target in ("softmax", "sigmoid"):
            return True
        return node.target in _PASS_METHODS | _SHAPE_PASS_METHODS and nonnegative(first, modules)
    return False


SHAPE_PROPAGATED = "proqha_shape_propagated"  # node.meta key: set by a shape-propagation pass that ran the node


def is_shape_value(node: Any) -> bool:
    """True for values that are not tensors, such as sizes (x.size(0) + 1): they must not be mistaken for
    tensor adds, and an exporter writes no node for them. Once shape propagation ran a node (it sets
    ``SHAPE_PROPAGATED``, and ``tensor_meta`` on tensor outputs) that is known; before, it is judged by what
    the node computes (a size method, ``.shape``, operators on them)."""
    if not isinstance(node, fx.Node):
        return not isinstance(node, torch.Tensor)
    if node.meta.get(SHAPE_PROPAGATED):
        return "tensor_meta" not in node.meta and not isinstance(node.meta.get("val", None), torch.Tensor)
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] == "shape"
    if node.op == "call_function" and node.target.__module__ in ("_operator", "operator"):
        return any(is_shape_value(a) for a in node.args if isinstance(a, fx.Node))
    return False


def constant_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes computed from parameters, buffers and literals only (a relative position bias gathered from
    its table): no input reaches them, so an exporter can write their values."""
    constant: set[fx.Node] = set()
    for node in graph.nodes:  # topological order
        if node.op == "get_attr" or (node.op in ("call_function", "call_method", "call_module")
                                     and node.all_input_nodes and all(a in constant for a in node.all_input_nodes)):
            constant.add(node)
    return constant


def is_tensor_add(node: fx.Node, constant: set[fx.Node]) -> bool:
    is_add = (node.op == "call_function" and node.target in _ADD_FUNCS) or (
        node.op == "call_method" and node.target in ("add", "add_"))
    if not is_add or len(node.args) != 2 or node.kwargs:
        return False  # adding a parameter (a position embedding, a bias table) is a bias: it stays float
    return all(isinstance(a, fx.Node) and a not in constant and not is_shape_value(a) for a in node.args)


def is_matmul(node: fx.Node) -> bool:
    """A product of two tensors (torch.matmul, @, bmm)."""
    return (node.op == "call_function" and node.target in _MATMUL_FUNCS) or (
        node.op == "call_method" and node.target in ("matmul", "bmm"))


def is_shape_pass(node: fx.Node) -> bool:
    """An operator that moves elements without changing them (a per-tensor quantizer commutes with it)."""
    return (node.op == "call_function" and node.target in _SHAPE_PASS_FUNCS) or (
        node.op == "call_method" and node.target in _SHAPE_PASS_METHODS)


def owner_path(node: fx.Node) -> str:
    """Module path of the forward() that contains a node (from fx's nn_module_stack)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    value = list(stack.values())[-1]
    path = value[0] if isinstance(value, tuple) else str(value)
    return path.split("@")[0]


def unique_name(root: nn.Module, base: str) -> str:
    names = dict(root.named_modules())
    name, i = base, 1
    while name in names:
        name, i = f"{base}_{i}", i + 1
    return name


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, leaf, module)



# --- tracing and rewriting ----------------------------------------------------------------------

def _train_dependent_modules() -> tuple[type, ...]:
    """Modules whose forward branches on ``self.training`` outside torch.nn (fx would bake the mode in)."""
    return loaded_attributes("torchvision.ops.stochastic_depth", "StochasticDepth")


class _Tracer(fx.Tracer):
    """fx's tracer, keeping train/eval-dependent modules (stochastic depth) as calls, so that the traced
    model still drops paths in training and none in eval."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _train_dependent_modules()) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def is_impure(node: fx.Node) -> bool:
    """Nodes dead-code elimination must keep: fx's impure ones, and in-place calls (``x.add_(y)``)."""
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return node.is_impure() or node.target is operator.setitem or (
        node.op in ("call_method", "call_function") and name.endswith("_") and not name.startswith("_"))


def einsum_as_matmul(equation: str) -> tuple[list[int], list[int], list[int]] | None:
    """For a two-operand einsum that is a batched matrix product (shared batch letters first in the
    output, one row, one contracted and one column letter), the permutations that make it
    ``permute(a, pa) @ permute(b, pb)`` permuted by ``po``; None for any other equation."""
    if "." in equation or "->" not in equation:
        return None
    lhs, out = equation.replace(" ", "").split("->")
    operands = lhs.split(",")
    if len(operands) != 2:
        return None
    a, b = operands
    if any(len(set(t)) != len(t) for t in (a, b, out)):
        return None
    batch = [c for c in out if c in a and c in b]
    rows = [c for c in out if c in a and c not in b]
    cols = [c for c in out if c in b and c not in a]
    inner = [c for c in a if c in b and c not in out]
    if len(rows) != 1 or len(cols) != 1 or len(inner) != 1 or len(a) != len(batch) + 2 or len(b) != len(batch) + 2:
        return None
    pa = [a.index(c) for c in batch + rows + inner]
    pb = [b.index(c) for c in batch + inner + cols]
    po = [(batch + rows + cols).index(c) for c in out]
    return pa, pb, po


def rewrite_einsums(gm: fx.GraphModule) -> None:
    """Replace einsums that are batched matrix products by permutes and a matmul, which the converter
    quantizes and an exporter writes as QLinearMatMul; other einsums stay (and are refused at export)."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.einsum or node.kwargs:
            continue
        equation, *operands = node.args
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = list(operands[0])
        perms = einsum_as_matmul(equation) if len(operands) == 2 else None
        if perms is None:
            continue
        with graph.inserting_before(node):
            a, b = (graph.call_method("permute", (x, p)) if p != sorted(p) else x for x, p in zip(operands, perms))
            y = graph.call_function(torch.matmul, (a, b))
            if perms[2] != sorted(perms[2]):
                y = graph.call_method("permute", (y, perms[2]))
        node.replace_all_uses_with(y)
        graph.erase_node(node)
    graph.lint()
    gm.recompile()


def quantizer_behind(node: Any, modules: Mapping[str, nn.Module]) -> Quantizer | None:
    """The quantizer whose output ``node`` is, possibly reshaped or transposed since (None if none)."""
    while isinstance(node, fx.Node) and is_shape_pass(node) and node.args:
        node = node.args[0]
    if not isinstance(node, fx.Node) or node.op != "call_module":
        return None
    mod = modules[node.target]
    if isinstance(mod, QuantAdd):
        mod = mod.output_quantizer
    return mod if isinstance(mod, Quantizer) else None
