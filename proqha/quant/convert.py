"""Turn any float CNN into its quantized twin.

``quantize_model`` traces the model with torch.fx (as torch.ao's FX quantization does) to see what
a module walk cannot: which tensors are non-negative (after ReLU: PACT, unsigned grid) and where
residual adds are (they get 8-bit quantizers on their inputs and output so that a deployed graph stays
in integer kernels). Conv2d/Linear modules are replaced in place, so layer names are module paths.
Models that fx cannot trace fall back to a module walk (signed activation grids, adds left float).
"""

from __future__ import annotations

import copy
import functools
import operator
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from proqha.quant.attention import SplitAttention, make_traceable, split_packed_projections
from proqha.quant.layers import FoldedBatchNorm2d, QuantAdd, QuantConv2d, QuantLayer, QuantLinear, act_quantizer
from proqha.quant.quantizers import WEIGHT_QUANTIZERS, DoReFaWeightQuantizer, PACTQuantizer, Quantizer, check_bits

EDGE_CHOICES = ("int8", "float", "search")
QUANT_LAYER_TYPES: dict[type[nn.Module], type[QuantLayer]] = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}


_FLOAT_LAYERS = tuple(QUANT_LAYER_TYPES)


def quant_layer_type(mod: nn.Module) -> type[QuantLayer]:
    """The quantized twin class of a float layer (its type or nearest base class in QUANT_LAYER_TYPES)."""
    return next(QUANT_LAYER_TYPES[cls] for cls in type(mod).__mro__ if cls in QUANT_LAYER_TYPES)


@dataclass
class QuantConfig:
    """How to quantize a model.

    bits: starting weight and activation bits of the searchable layers (32: full precision).
    weight_quantizer: "lsq" (deploy-exact, default) or "dorefa" (the paper's; searchable layers only,
        fixed edge layers keep LSQ since 8-bit DoReFa does not fit int8).
    edge_layers: first conv and last linear: "int8" (8 bit, outside the search; the default),
        "float" (full precision, as the reference), or "search" (treated like every other layer).
    quantize_adds: insert the 8-bit residual-add quantizers integer deployment needs.
    quantize_outputs: quantize every conv/linear output (after its BN and activation) exactly once:
        where it feeds anything but a single quantizer (two branches, a pooling op, the model output),
        an 8-bit ``output_quantizer`` is inserted, so a deployed conv ends in one QuantizeLinear.
    """

    bits: int = 8
    weight_quantizer: str = "lsq"
    edge_layers: str = "int8"
    quantize_adds: bool = True
    quantize_outputs: bool = True

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.weight_quantizer not in WEIGHT_QUANTIZERS:
            raise ValueError(f"weight_quantizer must be one of {sorted(WEIGHT_QUANTIZERS)}, got {self.weight_quantizer!r}")
        if self.edge_layers not in EDGE_CHOICES:
            raise ValueError(f"edge_layers must be one of {EDGE_CHOICES}, got {self.edge_layers!r}")

    def edge_bits(self) -> int:
        return 32 if self.bits == 32 or self.edge_layers == "float" else 8

    def fixed_bits(self) -> int:
        """Bits of the quantizers outside the search (residual adds): 8, or off for a float model."""
        return 32 if self.bits == 32 else 8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- what the graph tells us ---------------------------------------------------------------------

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


def _is_relu(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _RELU_MODULES)
    if node.op == "call_function":
        return node.target in _RELU_FUNCS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _nonnegative(node: Any, modules: Mapping[str, nn.Module]) -> bool:
    """True when the tensor a node produces is >= 0 by construction (ReLU, or pooling/reshaping of one)."""
    if not isinstance(node, fx.Node):
        return False
    if _is_relu(node, modules):
        return True
    first = node.args[0] if node.args else None
    if node.op == "call_module":
        mod = modules[node.target]
        if isinstance(mod, QuantAdd):
            return mod.relu
        if isinstance(mod, Quantizer):
            return not mod.signed
        return isinstance(mod, _PASS_MODULES) and _nonnegative(first, modules)
    if node.op == "call_function":
        if node.target is torch.cat:
            return all(_nonnegative(a, modules) for a in first)
        if node.target in _PROBABILITY_FUNCS:
            return True
        return node.target in _PASS_FUNCS | _SHAPE_PASS_FUNCS and _nonnegative(first, modules)
    if node.op == "call_method":
        if node.target in ("softmax", "sigmoid"):
            return True
        return node.target in _PASS_METHODS | _SHAPE_PASS_METHODS and _nonnegative(first, modules)
    return False


def _is_shape_value(node: Any) -> bool:
    """True for nodes computing sizes (x.size(0) + 1), which must not be mistaken for tensor adds."""
    if not isinstance(node, fx.Node):
        return not isinstance(node, torch.Tensor)
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] == "shape"
    if node.op == "call_function" and node.target.__module__ in ("_operator", "operator"):
        return any(_is_shape_value(a) for a in node.args if isinstance(a, fx.Node))
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


def _is_tensor_add(node: fx.Node, constant: set[fx.Node]) -> bool:
    is_add = (node.op == "call_function" and node.target in _ADD_FUNCS) or (
        node.op == "call_method" and node.target in ("add", "add_"))
    if not is_add or len(node.args) != 2 or node.kwargs:
        return False  # adding a parameter (a position embedding, a bias table) is a bias: it stays float
    return all(isinstance(a, fx.Node) and a not in constant and not _is_shape_value(a) for a in node.args)


def is_matmul(node: fx.Node) -> bool:
    """A product of two tensors (torch.matmul, @, bmm)."""
    return (node.op == "call_function" and node.target in _MATMUL_FUNCS) or (
        node.op == "call_method" and node.target in ("matmul", "bmm"))


def _is_shape_pass(node: fx.Node) -> bool:
    """An operator that moves elements without changing them (a per-tensor quantizer commutes with it)."""
    return (node.op == "call_function" and node.target in _SHAPE_PASS_FUNCS) or (
        node.op == "call_method" and node.target in _SHAPE_PASS_METHODS)


def _owner_path(node: fx.Node) -> str:
    """Module path of the forward() that contains a node (from fx's nn_module_stack)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    value = list(stack.values())[-1]
    path = value[0] if isinstance(value, tuple) else str(value)
    return path.split("@")[0]


def _unique_name(root: nn.Module, base: str) -> str:
    names = dict(root.named_modules())
    name, i = base, 1
    while name in names:
        name, i = f"{base}_{i}", i + 1
    return name


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, leaf, module)


# --- conversion ----------------------------------------------------------------------------------

@functools.cache
def _train_dependent_modules() -> tuple[type, ...]:
    """Modules whose forward branches on ``self.training`` outside torch.nn (fx would bake the mode in)."""
    try:
        from torchvision.ops import StochasticDepth
    except ImportError:
        return ()
    return (StochasticDepth,)


class _Tracer(fx.Tracer):
    """fx's tracer, keeping train/eval-dependent modules (stochastic depth) as calls, so that the traced
    model still drops paths in training and none in eval."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _train_dependent_modules()) or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _is_impure(node: fx.Node) -> bool:
    """Nodes dead-code elimination must keep: fx's impure ones, and in-place calls (``x.add_(y)``)."""
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return node.is_impure() or node.target is operator.setitem or (
        node.op in ("call_method", "call_function") and name.endswith("_") and not name.startswith("_"))


def _einsum_as_matmul(equation: str) -> tuple[list[int], list[int], list[int]] | None:
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


def _rewrite_einsums(gm: fx.GraphModule) -> None:
    """Replace einsums that are batched matrix products by permutes and a matmul, which the converter
    quantizes and an exporter writes as QLinearMatMul; other einsums stay (and are refused at export)."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.einsum or node.kwargs:
            continue
        equation, *operands = node.args
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = list(operands[0])
        perms = _einsum_as_matmul(equation) if len(operands) == 2 else None
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


def _insert_quant_adds(gm: fx.GraphModule, bits: int) -> None:
    graph = gm.graph
    constant = constant_nodes(graph)
    for node in list(graph.nodes):
        if not _is_tensor_add(node, constant):
            continue
        modules = dict(gm.named_modules())
        users = list(node.users)
        fuse_relu = len(users) == 1 and _is_relu(users[0], modules)
        inputs = []
        for arg in node.args:
            already = arg.op == "call_module" and isinstance(modules[arg.target], (QuantAdd, Quantizer))
            inputs.append(nn.Identity() if already else act_quantizer(bits, signed=not _nonnegative(arg, modules)))
        owner = _owner_path(node)
        name = _unique_name(gm, f"{owner}.add" if owner else "add")
        qadd = QuantAdd(inputs[0], inputs[1], act_quantizer(bits, signed=not fuse_relu), relu=fuse_relu)
        if not gm.add_submodule(name, qadd):
            raise RuntimeError(f"cannot register {name} in the traced model")
        last = users[0] if fuse_relu else node
        with graph.inserting_after(last):
            new = graph.call_module(name, tuple(node.args))
        last.replace_all_uses_with(new)
        if fuse_relu:
            graph.erase_node(last)
        graph.erase_node(node)
    graph.lint()
    gm.recompile()


_CHAIN_MODULES = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.MaxPool2d)


def _block_end(node: fx.Node, modules: Mapping[str, nn.Module]) -> fx.Node:
    """Follow a conv/linear through its BatchNorm, activation and max pooling (single-user chain) to the
    block output. Max pooling commutes with a monotone quantizer, so quantizing after it is the same
    function, and a deployed graph pools on the integer grid."""
    while len(node.users) == 1:
        user = next(iter(node.users))
        chained = (user.op == "call_module" and isinstance(modules[user.target], _CHAIN_MODULES)) or \
            _is_relu(user, modules) or (user.op == "call_function" and user.target is F.max_pool2d)
        if not chained:
            break
        node = user
    return node


def _quantizes_input(user: fx.Node, arg: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    """Whether ``user`` quantizes the tensor ``arg`` as its input (a conv/linear, or a QuantAdd input)."""
    if user.op != "call_module":
        return False
    mod = modules[user.target]
    if isinstance(mod, (*_FLOAT_LAYERS, Quantizer)):
        return True
    if isinstance(mod, QuantAdd):
        side = mod.input_quantizer_a if user.args[0] is arg else mod.input_quantizer_b
        return not isinstance(side, nn.Identity)
    return False


def _insert_output_quantizers(gm: fx.GraphModule, bits: int) -> None:
    """Give every conv/linear block output that does not feed exactly one quantizer its own quantizer."""
    graph = gm.graph
    layers = [node for nodes in _layer_calls(gm).values() for node in nodes]
    modules = dict(gm.named_modules())
    for layer in layers:
        end = _block_end(layer, modules)
        users = list(end.users)
        if len(users) == 1 and _quantizes_input(users[0], end, modules):
            continue
        name = _unique_name(gm, f"{layer.target}.output_quantizer")
        quantizer = act_quantizer(bits, signed=not _nonnegative(end, modules))
        gm.add_submodule(name, quantizer)
        with graph.inserting_after(end):
            new = graph.call_module(name, (end,))
        end.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
        modules = dict(gm.named_modules())
        for user in users:  # an add input that is now quantized upstream passes straight through
            if user.op == "call_module" and isinstance(modules[user.target], QuantAdd):
                qadd = modules[user.target]
                if user.args[0] is new:
                    qadd.input_quantizer_a = nn.Identity()
                if user.args[1] is new:
                    qadd.input_quantizer_b = nn.Identity()
    graph.lint()
    gm.recompile()


def quantizer_behind(node: Any, modules: Mapping[str, nn.Module]) -> Quantizer | None:
    """The quantizer whose output ``node`` is, possibly reshaped or transposed since (None if none)."""
    while isinstance(node, fx.Node) and _is_shape_pass(node) and node.args:
        node = node.args[0]
    if not isinstance(node, fx.Node) or node.op != "call_module":
        return None
    mod = modules[node.target]
    if isinstance(mod, QuantAdd):
        mod = mod.output_quantizer
    return mod if isinstance(mod, Quantizer) else None


def _feeds_one_quantizer(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    """Whether ``node``'s only consumer, through reshapes and transposes, quantizes it."""
    while len(node.users) == 1:
        user = next(iter(node.users))
        if _quantizes_input(user, node, modules):
            return True
        if not _is_shape_pass(user):
            return False
        node = user
    return False


def _insert_matmul_quantizers(gm: fx.GraphModule, bits: int) -> None:
    """Quantize both inputs and the output of every tensor matmul (attention's q k^T and p v), so that
    onnxruntime runs it as QLinearMatMul. An input already on a grid (a projection's output quantizer,
    through reshapes) is not quantized twice; an output whose one consumer quantizes it needs no own."""
    graph = gm.graph
    for node in [n for n in graph.nodes if is_matmul(n)]:
        modules = dict(gm.named_modules())
        owner = _owner_path(node)
        for i, src in enumerate(node.args[:2]):
            if not isinstance(src, fx.Node) or quantizer_behind(src, modules) is not None:
                continue
            name = _unique_name(gm, f"{owner}.matmul_input_quantizer" if owner else "matmul_input_quantizer")
            gm.add_submodule(name, act_quantizer(bits, signed=not _nonnegative(src, modules)))
            with graph.inserting_before(node):
                q = graph.call_module(name, (src,))
            args = list(node.args)
            args[i] = q
            node.args = tuple(args)
        if _feeds_one_quantizer(node, modules):
            continue
        name = _unique_name(gm, f"{owner}.matmul_output_quantizer" if owner else "matmul_output_quantizer")
        gm.add_submodule(name, act_quantizer(bits, signed=True))
        with graph.inserting_after(node):
            out = graph.call_module(name, (node,))
        node.replace_all_uses_with(out, delete_user_cb=lambda user: user is not out)
    graph.lint()
    gm.recompile()


def _layer_calls(gm: fx.GraphModule) -> dict[str, list[fx.Node]]:
    """Conv/linear calls by module path, except those computing from parameters alone (a position-bias
    MLP): they stay float and an exporter writes their result as a value."""
    modules = dict(gm.named_modules())
    constant = constant_nodes(gm.graph)
    calls: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], _FLOAT_LAYERS) and node not in constant:
            calls.setdefault(node.target, []).append(node)
    return calls


def _edge_names(names: list[str], modules: Mapping[str, nn.Module]) -> set[str]:
    """The first conv and the last linear (the last layer if there is no linear)."""
    if not names:
        return set()
    convs = [n for n in names if isinstance(modules[n], nn.Conv2d)]
    linears = [n for n in names if isinstance(modules[n], nn.Linear)]
    return {(convs or names)[0], (linears or names)[-1]}


def _swap_layers(root: nn.Module, signed: Mapping[str, bool], edges: set[str], config: QuantConfig) -> None:
    modules = dict(root.named_modules())
    wq_cls = WEIGHT_QUANTIZERS[config.weight_quantizer]
    for name, is_signed in signed.items():
        mod = modules[name]
        edge = name in edges and config.edge_layers != "search"
        bits = config.edge_bits() if edge else config.bits
        out_ch = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
        # fixed edge layers keep the int8-exact LSQ grid (8-bit DoReFa has levels up to 255)
        a_q, w_q = act_quantizer(bits, is_signed), (WEIGHT_QUANTIZERS["lsq"] if edge else wq_cls)(bits, out_ch)
        q = quant_layer_type(mod).from_float(mod, a_q.to(mod.weight.device), w_q.to(mod.weight.device))
        q.searchable = not edge
        _set_module(root, name, q)


def _conv_bn_pairs(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """(conv, batchnorm) module paths where the BN is the conv's only user: a deployed graph folds them."""
    modules = dict(gm.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d) and len(node.users) == 1:
            user = next(iter(node.users))
            if user.op == "call_module" and isinstance(modules[user.target], nn.BatchNorm2d):
                pairs.append((node.target, user.target))
    return pairs


def _fold_batchnorms(gm: fx.GraphModule, pairs: list[tuple[str, str]]) -> None:
    for conv_path, bn_path in pairs:
        bn = gm.get_submodule(bn_path)
        folded = bn if isinstance(bn, FoldedBatchNorm2d) else FoldedBatchNorm2d.from_bn(bn)
        folded.attach(gm.get_submodule(conv_path))
        _set_module(gm, bn_path, folded)


def _absorb_relus(gm: fx.GraphModule) -> None:
    """Drop ReLUs whose every user is a quantized layer with a PACT input quantizer: its clamp at 0 is
    the same function and gradient, and one fewer pass over the tensor each way (~8% of a ResNet step)."""
    modules = dict(gm.named_modules())
    changed = False
    for node in list(gm.graph.nodes):
        if not _is_relu(node, modules) or not node.users:
            continue
        users = list(node.users)
        layers = [modules[u.target] for u in users if u.op == "call_module"]
        if len(layers) != len(users) or not all(
                isinstance(m, QuantLayer) and isinstance(m.input_quantizer, PACTQuantizer) for m in layers):
            continue
        if any(u.args[0] is not node or len(u.args) != 1 or u.kwargs for u in users):
            continue
        for m in layers:
            m.input_quantizer.absorbs_relu = True
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()


def quantize_model(model: nn.Module, config: QuantConfig | None = None,
                   input_size: tuple[int, ...] | None = None) -> nn.Module:
    """Return the quantized twin of ``model`` (which is left untouched).

    Every Conv2d/Linear becomes a QuantConv2d/QuantLinear with an input quantizer (PACT when its input
    is non-negative, signed symmetric otherwise) and a weight quantizer; with ``quantize_adds`` each
    tensor add becomes a QuantAdd. Layer names are the float model's module paths. Attention modules
    become traceable twins (``proqha.quant.attention``); window attention (Swin) needs ``input_size``
    (C, H, W without the batch) and is left opaque without it.
    """
    config = config or QuantConfig()
    original, model = model, copy.deepcopy(model)
    twins = make_traceable(model, input_size)
    try:
        root: nn.Module = _trace(model)
        root.graph.eliminate_dead_code(_is_impure)  # e.g. attention weights nobody reads
        root.recompile()
        scales = {path: twin.query_scale for path, twin in twins.items() if isinstance(twin, SplitAttention)}
        if scales:  # float checkpoints of the original model still load
            root.register_load_state_dict_pre_hook(functools.partial(split_packed_projections, scales))
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: fall back to a module walk
        warnings.warn(f"torch.fx could not trace {type(model).__name__} ({exc}); residual adds stay "
                      "float and every activation grid is signed", stacklevel=2)
        model = copy.deepcopy(original)
        modules = dict(model.named_modules())
        names = [n for n, m in modules.items() if isinstance(m, _FLOAT_LAYERS)]
        _swap_layers(model, {n: True for n in names}, _edge_names(names, modules), config)
        return model
    _rewrite_einsums(root)
    if config.quantize_adds:
        _insert_quant_adds(root, config.fixed_bits())
    if config.quantize_outputs:
        _insert_output_quantizers(root, config.fixed_bits())
        _insert_matmul_quantizers(root, config.fixed_bits())
    modules = dict(root.named_modules())
    calls = _layer_calls(root)
    signed = {name: any(not _nonnegative(c.args[0], modules) for c in nodes) for name, nodes in calls.items()}
    pairs = _conv_bn_pairs(root)
    _swap_layers(root, signed, _edge_names(list(calls), modules), config)
    _fold_batchnorms(root, pairs)
    _absorb_relus(root)
    return root


# --- looking at a quantized model ----------------------------------------------------------------

def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    """All quantized conv/linear layers by module path, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


def searchable_layers(model: nn.Module) -> dict[str, QuantLayer]:
    """The layers whose bits the search may change."""
    return {n: m for n, m in quant_layers(model).items() if m.searchable}


def set_uniform_bits(model: nn.Module, bits: int, layers: Iterable[str] | None = None) -> None:
    """Set weight and activation bits of the searchable layers (or of ``layers``)."""
    check_bits(bits)
    chosen = searchable_layers(model) if layers is None else {n: quant_layers(model)[n] for n in layers}
    for layer in chosen.values():
        layer.set_bits(w=bits, a=bits)


def float_twin(model: nn.Module) -> nn.Module:
    """A copy of a quantized model with every quantizer off: the float network it was trained from."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, Quantizer):
            m.bits = 32
    return twin.eval()


def load_float_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a float (or quantized) state dict into a quantized twin.

    Keys the quantizers add may be missing (they initialise on the first forward); anything else
    missing or unexpected is an error naming the first culprits.
    """
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if "quantizer" not in k]
    absent = {k.rpartition(".")[0] for k in result.missing_keys if k.endswith(".alpha")}
    for name, mod in model.named_modules():
        if name in absent and isinstance(mod, Quantizer) and not isinstance(mod, DoReFaWeightQuantizer):
            mod.initialized = False  # its range comes from the loaded tensors, on the next forward
    if missing or result.unexpected_keys:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}")
        if result.unexpected_keys:
            parts.append(f"unexpected {', '.join(result.unexpected_keys[:3])}")
        raise ValueError("state dict does not match the model: " + "; ".join(parts))
