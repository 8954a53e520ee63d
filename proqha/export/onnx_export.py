"""The QDQ ONNX export of a quantized model (``export_onnx``): built from the quantized modules' declared
grids by ``writer.GraphWriter``, which walks the model's fx graph. Convs absorb the BatchNorm that follows
them (per-channel scales absorb it; the trained integers stay), weights are integer initializers holding
the trained integers, activations are Q/DQ pairs with the trained scales (the profile in ``qdq`` decides
how), biases are int32. ``quantized=False`` writes the float graph of the same model (the latency
baseline). ``graph_metadata`` is what a file says about itself.
"""

from __future__ import annotations

import json

import onnx
import torch
import torch.fx as fx
from torch import nn

from proqha import __version__
from proqha.cost import CostReport, cost_report
from proqha.errors import OptionError, ProqhaError, first_line
from proqha.export import qdq
from proqha.export.export_info import ExportInfo, LayerExport
from proqha.export.qdq import EXACT_ON
from proqha.export.writer import INPUT_NAME, OUTPUT_NAME, PROBE_BATCH, GraphWriter, ShapeProbe
from proqha.quant import BitConfig, require_quantized
from proqha.quant.grid import INT8_KERNELS

__all__ = ["EXACT_ON", "INPUT_NAME", "OUTPUT_NAME", "PROBE_BATCH", "ExportInfo", "LayerExport", "check_int8_kernels",
           "check_profile", "check_weights", "export_onnx", "graph_metadata", "loads_in"]


def graph_metadata(model: nn.Module, info: ExportInfo, input_size: tuple[int, ...], fmt: str = "onnx"
                   ) -> dict[str, str]:
    """What an exported file carries about itself: format and profile, the graph form and the CPUs it is
    exact on, per-layer bits (with each weight's factor k and zero point), paper cost, BitOPs, size and
    the output step. Callers add where it came from and write it with ``graph_builder.set_metadata``."""
    cost = cost_report(model, tuple(input_size))
    bits = BitConfig.from_model(model).to_dict()
    for name, layer in info.layers.items():
        bits[name]["weight_int_factor"] = layer.int_factor
        bits[name]["weight_zero_point"] = layer.weight_zero_point
        bits[name]["weight_storage"] = layer.weight_storage
    exact = qdq.profile_for(info.profile, info.int8_kernels).metadata(info.quantized)
    return exact | {
        "proqha.version": __version__, "proqha.format": fmt, "proqha.profile": info.profile,
        "proqha.weights": info.weights if info.quantized else "float", "proqha.opset": str(info.opset),
        "proqha.loads_in": loads_in(info.opset),
        "proqha.input_size": json.dumps(list(input_size)), "proqha.bits": json.dumps(bits, sort_keys=True),
        **cost_metadata(cost), "proqha.output_scale": "" if info.output_scale is None else repr(info.output_scale),
    }


def cost_metadata(cost: CostReport) -> dict[str, str]:
    """The cost figures a file records (paper cost, BitOPs, their ratio, the cost model's size)."""
    return {"proqha.paper_cost": repr(cost.paper_cost), "proqha.bitops": str(cost.bitops),
            "proqha.bitops_ratio": repr(cost.bitops_ratio), "proqha.size_bytes": str(cost.size_bytes)}


def _check_choice(option: str, value: str, choices: tuple[str, ...] | dict[str, object]) -> str:
    if value not in choices:
        raise OptionError(option, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_int8_kernels(value: str) -> str:
    """``value`` if it names a graph form in ``INT8_KERNELS``, else OptionError (one line)."""
    return _check_choice("int8_kernels", value, INT8_KERNELS)


def check_weights(value: str) -> str:
    """``value`` if it names a weight storage in ``qdq.WEIGHT_STORAGES``, else OptionError (one line)."""
    return _check_choice("weights", value, qdq.WEIGHT_STORAGES)


def check_profile(value: str) -> str:
    """``value`` if it names a deployment profile in ``qdq.PROFILES``, else OptionError (one line)."""
    return _check_choice("profile", value, qdq.PROFILES)


ONNX_RELEASE_OF_OPSET = {19: "1.14", 21: "1.16", 25: "1.20"}


def loads_in(opset: int) -> str:
    """Which runtimes read a graph of ``opset``, as the metadata and the README say it."""
    import onnxruntime

    return (f"onnxruntime implementing ONNX opset {opset} (ONNX {ONNX_RELEASE_OF_OPSET.get(opset, '?')}); "
            f"verified with onnxruntime {onnxruntime.__version__}")


@torch.no_grad()
def export_onnx(model: nn.Module, input_size: tuple[int, ...], profile: str = "ort", quantized: bool = True,
                int8_kernels: str = "portable", weights: str = "packed", dynamic_size: bool = False
                ) -> tuple[onnx.ModelProto, ExportInfo]:
    """Write ``model`` (a quantized twin from ``quantize_model``) as an ONNX graph.

    ``profile`` picks how activation grids are written (see ``proqha.export.qdq``); ``quantized=False``
    gives the float graph. Weights are stored as k times their trained integers at scale / k (k from
    ``weight_int_factor``: the same weights, a finer int32 bias grid, which the quantized layers round
    their bias to as well). ``int8_kernels="portable"`` (default) keeps every uint8 x int8 pair sum inside
    int16, so the graph is exact on every CPU: a model trained portable (``QuantConfig.int8_kernels``) has
    int8 weights that fit everywhere, and a layer trained on the full 8-bit grid is stored as uint8 (the
    slower U8U8 kernels); ``"vnni"`` stores int8 weights everywhere, exact only where int8 kernels sum in
    int32 (``EXACT_ON``), and is recorded as portable when every layer fits int16 anyway.
    ``weights="packed"`` (default, ``ort`` profile) stores 2-bit grids as INT2 and 3/4-bit grids as INT4,
    widened by nodes onnxruntime folds at load (the same kernels and outputs as ``"int8"``); the graph's
    opset is the lowest that reads its types (19, 21 with INT4, 25 with INT2). ``dynamic_size``: height
    and width (every dimension after the channels) are dynamic too, as the batch always is; the model is
    traced at a second size (``other_size``) as well, and an operator whose written size would hold at
    the traced one only is refused. The model is put in eval mode. Returns the model proto and what
    validation needs to know about it.
    """
    check_profile(profile)
    check_int8_kernels(int8_kernels)
    check_weights(weights)
    if quantized:
        require_quantized(model, "export")
    if not isinstance(model, fx.GraphModule):
        raise ProqhaError("only models that torch.fx could trace can be exported (this one fell back to a module walk)")
    model = model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    probe = torch.zeros(PROBE_BATCH, *input_size, device=device)
    try:  # a plain forward first: fx's ShapeProp prints a traceback before it raises
        output_size = tuple(model(probe).shape[1:])
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ProqhaError(f"the model cannot run on input size {tuple(input_size)}: {first_line(exc)}") from None
    writer = GraphWriter(model, profile, quantized, int8_kernels, weights)
    if dynamic_size:
        writer.info.other_size = other_size(input_size)
        writer.other_shapes = other_shapes(model, writer, writer.info.other_size, device)
    # every node's output shape (for reshapes, N-d linears), and the values of the constants it writes
    ShapeProbe(model, writer.constants).propagate(probe)
    proto = writer.run(tuple(input_size), output_size)
    writer.info.int8_kernels = writer.grids.recorded_int8_kernels(proto, quantized)
    return proto, writer.info


def other_size(input_size: tuple[int, ...]) -> tuple[int, ...]:
    """The second size a dynamic-size graph is traced and checked at: the spatial dimensions times 2, 3, ...
    (sizes every stride of the traced ones divides too; distinct factors, so that a square input's height
    and width still tell apart, which a reshape reading them at run time needs)."""
    if len(input_size) < 2:
        raise OptionError("dynamic_size", f"needs an input with spatial dimensions, got input size {tuple(input_size)}")
    return (input_size[0], *((i + 2) * s for i, s in enumerate(input_size[1:])))


def other_shapes(model: fx.GraphModule, writer: GraphWriter, size: tuple[int, ...], device: torch.device
                 ) -> dict[fx.Node, list[tuple[int, ...]]]:
    """Every node's output shapes with the model run at ``size``; a model that cannot run there is refused
    in one line (its height and width cannot be dynamic)."""
    probe = torch.zeros(PROBE_BATCH, *size, device=device)
    try:
        model(probe)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ProqhaError(f"a dynamic height and width need a model that runs at other sizes; at input size {size} "
                          f"it fails: {first_line(exc)}") from None
    ShapeProbe(model, writer.constants).propagate(probe)
    return {n: writer.shapes(n) for n in model.graph.nodes if n.meta.get("tensor_meta") is not None}
