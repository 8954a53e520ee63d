"""Where quantizers go in a traced graph beyond each layer's own: residual adds, conv/linear outputs that
feed more than one quantizer, tensor matmuls; output ranges the model returns; grids shared with the
quantizer a layer reads. ``proqha.quant.convert.quantize_model`` runs these passes in order.
"""

from __future__ import annotations

from typing import Mapping

import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from proqha.quant.fx_graph import (
    constant_nodes,
    is_matmul,
    is_relu,
    is_shape_pass,
    is_tensor_add,
    nonnegative,
    owner_path,
    quantizer_behind,
    unique_name,
)
from proqha.quant.layers import QuantAdd, QuantLayer, act_quantizer
from proqha.quant.quantizers import Quantizer

FLOAT_LAYERS = (nn.Conv2d, nn.Linear)  # the float layers conversion quantizes (convert.QUANT_LAYER_TYPES)


def layer_calls(gm: fx.GraphModule) -> dict[str, list[fx.Node]]:
    """Conv/linear calls by module path, except those computing from parameters alone (a position-bias
    MLP): they stay float and an exporter writes their result as a value."""
    modules = dict(gm.named_modules())
    constant = constant_nodes(gm.graph)
    calls: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], FLOAT_LAYERS) and node not in constant:
            calls.setdefault(node.target, []).append(node)
    return calls


def insert_add_quantizers(gm: fx.GraphModule, bits: int) -> None:
    graph = gm.graph
    constant = constant_nodes(graph)
    for node in list(graph.nodes):
        if not is_tensor_add(node, constant):
            continue
        modules = dict(gm.named_modules())
        users = list(node.users)
        fuse_relu = len(users) == 1 and is_relu(users[0], modules)
        inputs = []
        for arg in node.args:
            already = arg.op == "call_module" and isinstance(modules[arg.target], (QuantAdd, Quantizer))
            inputs.append(nn.Identity() if already else act_quantizer(bits, signed=not nonnegative(arg, modules)))
        owner = owner_path(node)
        name = unique_name(gm, f"{owner}.add" if owner else "add")
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
            is_relu(user, modules) or (user.op == "call_function" and user.target is F.max_pool2d)
        if not chained:
            break
        node = user
    return node


def _quantizes_input(user: fx.Node, arg: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    """Whether ``user`` quantizes the tensor ``arg`` as its input (a conv/linear, or a QuantAdd input)."""
    if user.op != "call_module":
        return False
    mod = modules[user.target]
    if isinstance(mod, (*FLOAT_LAYERS, Quantizer)):
        return True
    if isinstance(mod, QuantAdd):
        side = mod.input_quantizer_a if user.args[0] is arg else mod.input_quantizer_b
        return not isinstance(side, nn.Identity)
    return False


def insert_output_quantizers(gm: fx.GraphModule, bits: int) -> None:
    """Give every conv/linear block output that does not feed exactly one quantizer its own quantizer."""
    graph = gm.graph
    layers = [node for nodes in layer_calls(gm).values() for node in nodes]
    modules = dict(gm.named_modules())
    for layer in layers:
        end = _block_end(layer, modules)
        users = list(end.users)
        if len(users) == 1 and _quantizes_input(users[0], end, modules):
            continue
        name = unique_name(gm, f"{layer.target}.output_quantizer")
        quantizer = act_quantizer(bits, signed=not nonnegative(end, modules))
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


def _feeds_one_quantizer(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    """Whether ``node``'s only consumer, through reshapes and transposes, quantizes it."""
    while len(node.users) == 1:
        user = next(iter(node.users))
        if _quantizes_input(user, node, modules):
            return True
        if not is_shape_pass(user):
            return False
        node = user
    return False


def insert_matmul_quantizers(gm: fx.GraphModule, bits: int) -> None:
    """Quantize both inputs and the output of every tensor matmul (attention's q k^T and p v), so that
    onnxruntime runs it as QLinearMatMul. An input already on a grid (a projection's output quantizer,
    through reshapes) is not quantized twice; an output whose one consumer quantizes it needs no own."""
    graph = gm.graph
    for node in [n for n in graph.nodes if is_matmul(n)]:
        modules = dict(gm.named_modules())
        owner = owner_path(node)
        for i, src in enumerate(node.args[:2]):
            if not isinstance(src, fx.Node) or quantizer_behind(src, modules) is not None:
                continue
            name = unique_name(gm, f"{owner}.matmul_input_quantizer" if owner else "matmul_input_quantizer")
            gm.add_submodule(name, act_quantizer(bits, signed=not nonnegative(src, modules)))
            with graph.inserting_before(node):
                q = graph.call_module(name, (src,))
            args = list(node.args)
            args[i] = q
            node.args = tuple(args)
        if _feeds_one_quantizer(node, modules):
            continue
        name = unique_name(gm, f"{owner}.matmul_output_quantizer" if owner else "matmul_output_quantizer")
        gm.add_submodule(name, act_quantizer(bits, signed=True))
        with graph.inserting_after(node):
            out = graph.call_module(name, (node,))
        node.replace_all_uses_with(out, delete_user_cb=lambda user: user is not out)
    graph.lint()
    gm.recompile()


def track_output_ranges(gm: fx.GraphModule) -> None:
    """The quantizers whose output the model returns (its logits, possibly reshaped) take their range
    from the observed outputs (``Quantizer.track_range``): a learned range set by the untrained network
    clips the logits it should grow to, and a clipped logit gets no gradient back."""
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op == "output":
            for returned in node.all_input_nodes:
                quantizer = quantizer_behind(returned, modules)
                if quantizer is not None:
                    quantizer.track_range()


def share_input_grids(gm: fx.GraphModule) -> None:
    """Each quantized layer whose every call reads one quantizer's output (through reshapes) quantizes its
    input on that quantizer's grid while their bits agree (``Quantizer.share_grid_with``)."""
    modules = dict(gm.named_modules())
    for name, nodes in layer_calls(gm).items():
        layer = modules[name]
        sources = {id(q): q for q in (quantizer_behind(n.args[0], modules) for n in nodes)}
        source = next(iter(sources.values())) if len(sources) == 1 else None
        if isinstance(layer, QuantLayer) and source is not None and not source.tracks_range:
            layer.input_quantizer.share_grid_with(source)
