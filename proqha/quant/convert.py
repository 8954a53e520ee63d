"""Turn any float network into its quantized twin.

``quantize_model`` traces the model with torch.fx (as torch.ao's FX quantization does) to see what
a module walk cannot: which tensors are non-negative (after ReLU: PACT, unsigned grid), where residual
adds and tensor matmuls are (they get 8-bit quantizers on their inputs and output so that a deployed
graph stays in integer kernels); ``proqha.quant.fx_graph`` reads the graph,
``proqha.quant.quantizer_insertion`` places those quantizers, ``proqha.quant.attention`` makes opaque
attention modules traceable first. Conv2d/Linear modules are replaced in place, so layer
names are module paths. Models that fx cannot trace fall back to a module walk (signed activation
grids, adds left float).
"""

from __future__ import annotations

import copy
import functools
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

import torch
import torch.fx as fx
from torch import nn

from proqha.errors import OptionError
from proqha.quant.attention import SplitAttention, make_traceable, split_packed_projections
from proqha.quant.fx_graph import (
    is_impure,
    is_relu,
    nonnegative,
    rewrite_einsums,
    set_module,
    trace,
)
from proqha.quant.grid import INT8_KERNELS
from proqha.quant.layers import FoldedBatchNorm2d, QuantConv2d, QuantLayer, QuantLinear, act_quantizer
from proqha.quant.quantizer_insertion import (
    FLOAT_LAYERS,
    insert_add_quantizers,
    insert_matmul_quantizers,
    insert_output_quantizers,
    layer_calls,
    share_input_grids,
    track_output_ranges,
)
from proqha.quant.quantizers import (
    WEIGHT_QUANTIZERS,
    DoReFaWeightQuantizer,
    PACTQuantizer,
    Quantizer,
    WeightQuantizer,
    check_bits,
)

EDGE_CHOICES = ("int8", "float", "search")
QUANT_LAYER_TYPES: dict[type[nn.Module], type[QuantLayer]] = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}


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
    int8_kernels: the int8 kernels the trained grids must be exact on (``grid.INT8_KERNELS``): "portable"
        (default: every CPU; LSQ weights are paired with their layer's input, ``WeightQuantizer.pair_with``)
        or "vnni" (full 8-bit weight grids, exact where int8 sums are int32).
    share_grids: a layer whose input is a quantizer's output (a residual add's, a block output's) quantizes
        it on that grid while their bits agree (``Quantizer.share_grid_with``): one rounding, as the
        deployed graph runs it, instead of a requantization (Q, Clip, DQ) onnxruntime runs as three ops.
    """

    bits: int = 8
    weight_quantizer: str = "lsq"
    edge_layers: str = "int8"
    quantize_adds: bool = True
    quantize_outputs: bool = True
    int8_kernels: str = "portable"
    share_grids: bool = True

    def __post_init__(self) -> None:
        try:
            check_bits(self.bits)
        except ValueError as exc:
            raise OptionError("bits", str(exc).removeprefix("bits ")) from None
        for name, choices in (("weight_quantizer", sorted(WEIGHT_QUANTIZERS)), ("edge_layers", EDGE_CHOICES),
                              ("int8_kernels", INT8_KERNELS)):
            if getattr(self, name) not in choices:
                raise OptionError(name, f"must be one of {', '.join(choices)}, got {getattr(self, name)!r}")

    def edge_bits(self) -> int:
        return 32 if self.bits == 32 or self.edge_layers == "float" else 8

    def fixed_bits(self) -> int:
        """Bits of the quantizers outside the search (residual adds): 8, or off for a float model."""
        return 32 if self.bits == 32 else 8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- conversion ----------------------------------------------------------------------------------

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
        if config.int8_kernels == "portable" and isinstance(w_q, WeightQuantizer):
            w_q.pair_with(a_q)
        q = quant_layer_type(mod).from_float(mod, a_q.to(mod.weight.device), w_q.to(mod.weight.device))
        q.searchable = not edge
        set_module(root, name, q)


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
        set_module(gm, bn_path, folded)


def _absorb_relus(gm: fx.GraphModule) -> None:
    """Drop ReLUs whose every user is a quantized layer with a PACT input quantizer: its clamp at 0 is
    the same function and gradient, and one fewer pass over the tensor each way (~8% of a ResNet step)."""
    modules = dict(gm.named_modules())
    changed = False
    for node in list(gm.graph.nodes):
        if not is_relu(node, modules) or not node.users:
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


def _out_of_place(model: nn.Module) -> None:
    """Switch off ``inplace`` on modules (``nn.ReLU(inplace=True)``, Hardswish, Dropout): a quantizer keeps
    its output for the backward pass, which an in-place activation after it would overwrite."""
    for mod in model.modules():
        if isinstance(getattr(mod, "inplace", None), bool):
            mod.inplace = False


def _out_of_place_calls(gm: fx.GraphModule) -> None:
    """The same for functional calls in the traced graph (``F.relu(x, inplace=True)``)."""
    changed = False
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.kwargs.get("inplace") is True:
            node.kwargs = {**node.kwargs, "inplace": False}
            changed = True
    if changed:
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
    _out_of_place(model)
    twins = make_traceable(model, input_size)
    try:
        root: nn.Module = trace(model)
        root.graph.eliminate_dead_code(is_impure)  # e.g. attention weights nobody reads
        root.recompile()
        scales = {path: twin.query_scale for path, twin in twins.items() if isinstance(twin, SplitAttention)}
        if scales:  # float checkpoints of the original model still load
            root.register_load_state_dict_pre_hook(functools.partial(split_packed_projections, scales))
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: fall back to a module walk
        warnings.warn(f"torch.fx could not trace {type(model).__name__} ({exc}); residual adds stay "
                      "float and every activation grid is signed", stacklevel=2)
        model = copy.deepcopy(original)
        _out_of_place(model)
        modules = dict(model.named_modules())
        names = [n for n, m in modules.items() if isinstance(m, FLOAT_LAYERS)]
        _swap_layers(model, {n: True for n in names}, _edge_names(names, modules), config)
        return model
    rewrite_einsums(root)
    _out_of_place_calls(root)
    if config.quantize_adds:
        insert_add_quantizers(root, config.fixed_bits())
    if config.quantize_outputs:
        insert_output_quantizers(root, config.fixed_bits())
        insert_matmul_quantizers(root, config.fixed_bits())
    track_output_ranges(root)
    modules = dict(root.named_modules())
    calls = layer_calls(root)
    signed = {name: any(not nonnegative(c.args[0], modules) for c in nodes) for name, nodes in calls.items()}
    pairs = _conv_bn_pairs(root)
    _swap_layers(root, signed, _edge_names(list(calls), modules), config)
    _fold_batchnorms(root, pairs)
    _absorb_relus(root)
    if config.share_grids:
        share_input_grids(root)
    return root


# --- looking at a quantized model ----------------------------------------------------------------

def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    """All quantized conv/linear layers by module path, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


def require_quantized(model: nn.Module, what: str) -> None:
    """ProqhaError naming ``what`` when ``model`` has no quantized layer (a float network handed on as is)."""
    from proqha.errors import ProqhaError

    if not any(isinstance(m, QuantLayer) for m in model.modules()):
        raise ProqhaError(f"{what}: {type(model).__name__} is not quantized; call proqha.quantize(model, "
                          "example_batch) first (proqha train does it for you)")


def searchable_layers(model: nn.Module) -> dict[str, QuantLayer]:
    """The layers whose bits the search may change."""
    return {n: m for n, m in quant_layers(model).items() if m.searchable}


def set_uniform_bits(model: nn.Module, bits: int, layers: Iterable[str] | None = None) -> None:
    """Set weight and activation bits of the searchable layers (or of ``layers``)."""
    check_bits(bits)
    chosen = searchable_layers(model) if layers is None else {n: quant_layers(model)[n] for n in layers}
    for layer in chosen.values():
        layer.set_bits(w=bits, a=bits)


def switch_on_fixed_quantizers(model: nn.Module, config: QuantConfig) -> None:
    """Give the quantizers outside the search that are off (32 bit) the bits ``config`` gives them: edge
    layers ``edge_bits()``, residual adds and inserted output quantizers ``fixed_bits()``. A run trained
    in float enters a search this way, as if it had been trained at ``config.bits``; the ranges of the
    quantizers switched on are taken from the first batch they see."""
    knobs = {id(q) for layer in searchable_layers(model).values() for q in (layer.input_quantizer, layer.weight_quantizer)}
    edges = {id(q) for layer in quant_layers(model).values() if not layer.searchable
             for q in (layer.input_quantizer, layer.weight_quantizer)}
    for q in model.modules():
        if isinstance(q, Quantizer) and not q.enabled and id(q) not in knobs:
            q.bits = config.edge_bits() if id(q) in edges else config.fixed_bits()


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
