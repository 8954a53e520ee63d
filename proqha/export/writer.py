"""The QDQ ONNX graph writer (``GraphWriter``): walks a quantized model's fx graph once, each node to the
handler of its kind; convs and linears (their integer weights and BatchNorm folded in), quantizers and
residual adds are written here, float operators by their handlers in ``ops``, and grids by the profile
(``qdq``). ``ShapeProbe`` first records every node's output shape and the constants the graph needs."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from proqha.errors import ProqhaError
from proqha.export import ops, qdq
from proqha.export.export_info import ExportInfo, LayerExport
from proqha.export.graph_builder import GraphBuilder, dequantize_behind, dequantize_path
from proqha.quant import PACTQuantizer, QuantAdd, QuantConv2d, Quantizer, QuantLinear
from proqha.quant.fold import float_layer, integer_layer
from proqha.quant.fx_graph import SHAPE_PROPAGATED, constant_nodes, is_shape_value, quantizer_behind
from proqha.quant.grid import uint8_activation_max

INPUT_NAME, OUTPUT_NAME = "input", "logits"
# operators whose output differences are at most their input's (in its grid's steps): see grid_source
STEP_KEEPING_FUNCTIONS = (torch.nn.functional.interpolate, torch.flatten, torch.reshape, torch.permute,
                          torch.transpose)
STEP_KEEPING_METHODS = ("view", "reshape", "flatten", "permute", "transpose", "contiguous")
PROBE_BATCH = 2  # the batch of the shape-propagation pass; reshapes keep dimension 0 free


class ShapeProbe(ShapeProp):
    """Shape propagation that also keeps the value of every constant node a non-constant one reads (a
    relative position bias): the writer stores it as an initializer."""

    def __init__(self, model: fx.GraphModule, constant: set[fx.Node]) -> None:
        super().__init__(model)
        self.folded = {n for n in constant if n.op != "get_attr" and any(u not in constant for u in n.users)}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        n.meta[SHAPE_PROPAGATED] = True  # what ``is_shape_value`` reads: this node's tensor_meta is final
        if n in self.folded and isinstance(result, torch.Tensor):
            n.meta["proqha_value"] = result.detach()
        return result


class GraphWriter:
    """Writes one fx graph as ONNX (``run``); the handlers in ``ops`` ask it for names, shapes and grids."""

    def __init__(self, model: fx.GraphModule, profile: str, quantized: bool, int8_kernels: str, weights: str
                 ) -> None:
        self.model, self.profile, self.quantized = model, profile, quantized
        self.grids = qdq.profile_for(profile, int8_kernels, weights)  # how this profile writes grids
        self.modules = dict(model.named_modules())
        self.b = GraphBuilder()
        self.env: dict[fx.Node, str] = {}
        self.info = ExportInfo(profile, quantized, int8_kernels, self.grids.weights)
        self.written_grids: dict[str, qdq.EmittedGrid] = {}  # the activation grid a tensor name was written on
        self.weights_of: dict[str, tuple[str, str | None, Any]] = {}  # a layer's written weights, bias, (grid, BN)
        self.probe_batch = PROBE_BATCH
        self._batch: str | None = None  # the graph input's batch size, once a handler needs it
        self.constants = constant_nodes(model.graph)
        # with a dynamic height and width: every node's output shapes at a second input size (``varies``)
        self.other_shapes: dict[fx.Node, list[tuple[int, ...]]] | None = None

    # -- helpers ----------------------------------------------------------------------------------
    def act(self, x: str, quantizer: nn.Module, base: str) -> str:
        if not self.quantized or not isinstance(quantizer, Quantizer) or not quantizer.enabled:
            if isinstance(quantizer, PACTQuantizer) and quantizer.absorbs_relu:  # the ReLU it stands in for
                return self.b.node("Relu", [x], f"{base}.relu")
            return x
        grid = quantizer.grid()
        if x in self.written_grids and self.grids.emitted_grid(grid).holds(self.written_grids[x]):
            return x  # x is already on this grid: the second rounding and clamp change nothing
        out, written = self.grids.activation(self.b, x, grid, base, requantize=x in self.written_grids)
        self.written_grids[out] = written
        return out

    def const(self, base: str, t: torch.Tensor) -> str:
        return self.b.const(base, t.detach().cpu().numpy().astype(np.float32))

    def folded_bn(self, node: fx.Node) -> nn.BatchNorm2d | None:
        """The BatchNorm this conv absorbs: its only user."""
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(self.modules[users[0].target], nn.BatchNorm2d):
            return self.modules[users[0].target]
        return None

    # -- conv / linear ----------------------------------------------------------------------------
    def layer(self, node: fx.Node, layer: QuantConv2d | QuantLinear) -> str:
        name = node.target
        x = self.env[node.args[0]]
        tokens = isinstance(layer, QuantLinear) and len(self.shape(node.args[0])) != 2
        if tokens:  # a linear on N-d input (tokens, channels-last MLPs): a Gemm on the rows, features last
            rows = self.b.const(f"{name}.rows", np.array([-1, layer.in_features], np.int64))
            x = self.b.node("Reshape", [x, rows], f"{name}.to_rows")
        x = self.act(x, layer.input_quantizer, f"{name}.input")
        bn = self.folded_bn(node) if isinstance(layer, QuantConv2d) else None
        wq = layer.weight_quantizer
        record = LayerExport("conv" if isinstance(layer, QuantConv2d) else "linear", layer.w_bits, layer.a_bits,
                             None, 0, 0, False, bn is not None)
        grid = self.written_grids[x].scale if x in self.written_grids else None
        # integer weights need a quantized input: a layer at float activations (its weights at w bits or
        # not) is a float conv on its weights' dequantized values, whatever grid its input came on
        integer = self.quantized and wq.enabled and layer.input_quantizer.enabled and grid is not None
        if not integer:
            x = self.float_layer_input(x, layer.in_channels if isinstance(layer, QuantConv2d) else layer.in_features,
                                       name)
        if name in self.weights_of and self.weights_of[name][2] == (grid, bn):  # a later call: the same weights
            w, b, _ = self.weights_of[name]
            self.info.layers[name].calls += 1
        else:
            if integer:
                w, b = self.integer_weights(name, layer, bn, x, record)
            else:
                wf, bias = float_layer(layer, bn)
                w, b = self.const(f"{name}.weight", wf), None if bias is None else self.const(f"{name}.bias", bias)
            self.info.layers[name], self.weights_of[name] = record, (w, b, (grid, bn))
        inputs = [x, w] + ([b] if b is not None else [])
        if isinstance(layer, QuantLinear):
            y = self.b.node("Gemm", inputs, name, transB=1)
            if tokens:
                y = ops.reshape_to(self, y, node, f"{name}.from_rows")
        else:
            if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
                raise ProqhaError(f"{name}: only numeric zero padding can be exported")
            ph, pw = ops.pair(layer.padding)
            y = self.b.node("Conv", inputs, name, kernel_shape=ops.pair(layer.kernel_size), strides=ops.pair(layer.stride),
                            pads=[ph, pw, ph, pw], dilations=ops.pair(layer.dilation), group=layer.groups)
        if bn is not None:
            self.env[next(iter(node.users))] = y
        return y

    def float_layer_input(self, x: str, channels: int, name: str) -> str:
        """The input of a layer written with float weights: where ``x`` is a per-tensor DequantizeLinear's
        output (through Reshape/Transpose), the same integers reshaped alike and dequantized with the scale and
        zero point repeated per channel on axis 1 (the same values, bit for bit). onnxruntime quantizes the
        float weights of a Conv or Gemm whose input comes from a per-tensor DequantizeLinear to int8 itself
        (its WeightBiasQuantization transformer), and the layer would no longer compute what was trained."""
        dq, moves = dequantize_path(x, {out: n for n in self.b.nodes for out in n.output})
        inits = {t.name: t for t in self.b.initializers}
        if dq is None or dq.input[1] not in inits:
            return x
        step = onnx.numpy_helper.to_array(inits[dq.input[1]])
        if step.size != 1:
            return x  # already per channel: onnxruntime leaves the layer as it is
        q = dq.input[0]
        for move in reversed(moves):  # the integers reshaped as the dequantized values were
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in move.attribute}
            q = self.b.node(move.op_type, [q, *move.input[1:]], f"{name}.input_integers", **attrs)
        inputs = [q, self.b.const(f"{name}.input_scale_per_channel", np.full(channels, step.item(), step.dtype))]
        if len(dq.input) > 2 and dq.input[2]:
            zero = onnx.numpy_helper.to_array(inits[dq.input[2]])
            inputs.append(self.b.const(f"{name}.input_zero_point_per_channel", np.full(channels, zero.item(), zero.dtype)))
        return self.b.node("DequantizeLinear", inputs, f"{name}.input_dq_per_channel", axis=1)

    def integer_weights(self, name: str, layer: QuantConv2d | QuantLinear, bn: nn.BatchNorm2d | None, x: str,
                        record: LayerExport) -> tuple[str, str | None]:
        """The dequantized integer weights and bias of a quantized layer whose input ``x`` is quantized;
        fills ``record``."""
        wq = layer.weight_quantizer
        grid = wq.grid()
        deployed = integer_layer(layer, bn)
        if deployed.ints.abs().max() > 127:
            raise ProqhaError(f"{name}: {type(wq).__name__} at {wq.bits} bit has levels up to "
                              f"{int(deployed.ints.abs().max())}, beyond int8; export it at <= 7 bit")
        step = self.written_grids[x].scale
        if abs(step - float(deployed.input_scale)) > 1e-12 * step:
            deployed = integer_layer(layer, bn, input_scale=step)  # a profile that re-grids the input
        record.act_max = uint8_activation_max(layer.input_quantizer.grid())
        wide = self.grids.wide_weights(record.act_max, deployed.int_factor * grid.qmax)
        written = qdq.weight(self.b, (deployed.ints // deployed.int_factor).cpu().numpy(), deployed.int_factor,
                             deployed.scale.cpu().numpy(), name, (grid.qmin, grid.qmax, grid.odd_levels), wide,
                             self.grids.packs)
        record.dequantized, record.initializer, record.weight_storage = (written.dequantized, written.initializer,
                                                                          written.storage)
        record.weight_zero_point = qdq.WIDE_WEIGHT_ZERO_POINT if wide else 0
        record.qmin, record.qmax, record.odd_levels = grid.qmin, grid.qmax, grid.odd_levels
        record.int_factor = deployed.int_factor
        b = None
        if deployed.bias_ints is not None:
            b = self.grids.bias(self.b, deployed.bias_ints.cpu().numpy(), deployed.bias_scale.cpu().numpy(),
                                deployed.bias().detach().cpu().numpy(), name)
        return written.dequantized, b

    # -- the rest: quantizers and adds here, float operators from the tables in ``ops`` ----------------
    def module(self, node: fx.Node) -> str | list[str] | None:
        mod = self.modules[node.target]
        name = node.target
        if isinstance(mod, (QuantConv2d, QuantLinear)):
            return self.layer(node, mod)
        if isinstance(mod, nn.BatchNorm2d) and node in self.env:  # folded into the conv before it
            return None
        if isinstance(mod, QuantAdd):
            a = self.act(self.env[node.args[0]], mod.input_quantizer_a, f"{name}.input_a")
            c = self.act(self.env[node.args[1]], mod.input_quantizer_b, f"{name}.input_b")
            y = self.b.node("Add", [a, c], name)
            if mod.relu:
                y = self.b.node("Relu", [y], f"{name}.relu")
            if self.quantized and mod.output_quantizer.enabled:
                self.info.quant_adds += 1
            return self.act(y, mod.output_quantizer, f"{name}.output")
        if isinstance(mod, Quantizer):
            return self.act(self.env[node.args[0]], mod, name)
        handler = ops.module_handler(mod)
        if handler is None:
            raise ProqhaError(f"cannot export module {name} ({type(mod).__name__})")
        return handler(self, node)

    def function(self, node: fx.Node) -> str | list[str] | None:
        if is_shape_value(node):
            return None
        handler = ops.function_handler(node.target)
        if handler is None:
            name = getattr(node.target, "__name__", str(node.target))
            hint = f": {ops.HINTS[name]}" if name in ops.HINTS else ""
            raise ProqhaError(f"cannot export function {name} (node {node.name}){hint}")
        return handler(self, node)

    def method(self, node: fx.Node) -> str | list[str] | None:
        if is_shape_value(node):
            return None
        handler = ops.METHOD_OPS.get(node.target)
        if handler is None:
            raise ProqhaError(f"cannot export method .{node.target}() (node {node.name})")
        return handler(self, node)

    def get_attr(self, node: fx.Node) -> str:
        value = self.model.get_parameter(node.target) if node.target in dict(self.model.named_parameters()) \
            else self.model.get_buffer(node.target)
        return self.const(node.target, value)

    # -- what handlers ask --------------------------------------------------------------------------
    def base(self, node: fx.Node) -> str:
        """The ONNX name a node's output is based on: its module path, else its fx name."""
        return node.target if node.op == "call_module" else node.name

    def shapes(self, node: fx.Node) -> list[tuple[int, ...]]:
        """The propagated output shape(s) of a node (probe batch ``probe_batch``)."""
        meta = node.meta.get("tensor_meta")
        if meta is None:
            raise ProqhaError(f"node {node.name}: no propagated shape")
        metas = [meta] if hasattr(meta, "shape") else list(meta)  # TensorMetadata is itself a tuple
        return [tuple(m.shape) for m in metas]

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        return self.shapes(node)[0]

    def varies(self, node: fx.Node) -> bool:
        """Whether the graph has a dynamic height and width and ``node``'s output shape follows them (it
        differs at the second probe size): then a size written from the traced shape would be wrong."""
        return self.other_shapes is not None and self.other_shapes.get(node) != self.shapes(node)

    def varying_dims(self, node: fx.Node) -> list[int]:
        """The dimensions of ``node``'s (first) output that follow the input's height and width."""
        if self.other_shapes is None or node not in self.other_shapes:
            return []
        return [i for i, (a, b) in enumerate(zip(self.shape(node), self.other_shapes[node][0])) if a != b]

    def fixed_size(self, node: fx.Node, what: str, reads: fx.Node | None = None) -> None:
        """Refuse a dynamic height and width where ``node`` would write a size traced at one input size (its
        own output's, or that of the tensor it ``reads``)."""
        if self.varies(reads if reads is not None else node):
            raise ProqhaError(f"cannot export {what} {node.name} with a dynamic height and width: it is written "
                              "for the traced input size; export with a fixed size (dynamic_size off)")

    def shape_of(self, x: str, name: str, start: int = 0, end: int | None = None) -> str:
        """A Shape node of tensor ``x`` (dimensions ``start`` to ``end``): sizes known at run time only."""
        return self.b.node("Shape", [x], name, start=start, **({} if end is None else {"end": end}))

    def value(self, v: Any, name: str = "const") -> str | None:
        """The tensor name of a node argument, or a constant for a Python number (None stays None)."""
        if v is None:
            return None
        if isinstance(v, fx.Node):
            return self.env[v]
        if isinstance(v, (int, float)):
            return self.b.const(name, np.array(v, np.float32))
        raise ProqhaError(f"cannot export argument {v!r} ({name})")

    def kernel_input(self, node: fx.Node) -> str:
        """The tensor of an fx node that feeds an integer kernel (a matmul). If it is on a quantizer's grid
        but reaches the kernel through an operator onnxruntime does not move Q/DQ across (Split), that
        grid is written again right before the kernel: exact, since the values already lie on it."""
        x = self.env[node]
        quantizer = quantizer_behind(node, self.modules)
        if not self.quantized or quantizer is None or not quantizer.enabled:
            return x
        if dequantize_behind(x, {out: n for n in self.b.nodes for out in n.output}) is not None:
            return x
        out, written = self.grids.activation(self.b, x, quantizer.grid(), f"{self.base(node)}.grid")
        self.written_grids[out] = written
        return out

    def on_grid(self, node: fx.Node) -> bool:
        """Whether an fx node's tensor is an enabled quantizer's output (possibly reshaped since)."""
        quantizer = quantizer_behind(node, self.modules)
        return quantizer is not None and quantizer.enabled

    def grid_source(self, node: fx.Node) -> fx.Node:
        """The node whose grid bounds the differences of ``node``'s values: through upsampling (nearest copies
        values, linear blends them with weights summing to 1, so neither widens a difference) and reshapes
        back to the node that produced them; ``node`` itself otherwise."""
        while isinstance(node, fx.Node) and node.args and isinstance(node.args[0], fx.Node) and (
                (node.op == "call_function" and node.target in STEP_KEEPING_FUNCTIONS)
                or (node.op == "call_method" and node.target in STEP_KEEPING_METHODS)
                or (node.op == "call_module" and isinstance(self.modules[node.target], (nn.Upsample, nn.Flatten,
                                                                                       nn.Identity)))):
            node = node.args[0]
        return node

    def batch_shape(self, rest: list[int], name: str) -> str:
        """A shape tensor [batch, *rest] whose batch is the graph input's (dynamic) batch size."""
        if self._batch is None:
            self._batch = self.b.node("Shape", [INPUT_NAME], "input.batch", start=0, end=1)
        rest_const = self.b.const(f"{name}.rest", np.array(rest, np.int64))
        return self.b.node("Concat", [self._batch, rest_const], f"{name}.shape", axis=0)

    # -- the walk ---------------------------------------------------------------------------------
    def run(self, input_size: tuple[int, ...], output_size: tuple[int, ...]) -> onnx.ModelProto:
        handlers: dict[str, Callable[[fx.Node], str | list[str] | None]] = {
            "call_module": self.module, "call_function": self.function, "call_method": self.method,
            "get_attr": self.get_attr}
        out = None
        for node in self.model.graph.nodes:
            if node.op == "placeholder":
                self.env[node] = INPUT_NAME
            elif node.op == "output":
                out = self.env[node.args[0]]
                src = self.grid_source(node.args[0])
                if self.env.get(src) in self.written_grids:  # a quantizer's output, or a layer's on its grid
                    self.info.output_scale = self.written_grids[self.env[src]].scale
            elif node.op in handlers:
                if node in self.env:  # already produced (a folded BatchNorm)
                    continue
                if node in self.constants:  # computed from parameters alone: written once, as a value
                    if node.op == "get_attr" and any(u not in self.constants for u in node.users):
                        self.env[node] = self.get_attr(node)
                    elif "proqha_value" in node.meta:
                        self.env[node] = self.const(node.name, node.meta["proqha_value"])
                    continue
                y = handlers[node.op](node)
                if y is not None:
                    self.env[node] = y
            else:
                raise ProqhaError(f"cannot export graph node {node.name} ({node.op})")
        self.b.nodes.append(onnx.helper.make_node("Identity", [out], [OUTPUT_NAME], name=OUTPUT_NAME))
        dims_in, dims_out = ["batch", *input_size], ["batch", *output_size]
        if self.other_shapes is not None:
            dims_in, dims_out = dynamic_dims(self.other_shapes, self.model.graph, dims_in, dims_out)
        return self.b.model(INPUT_NAME, dims_in, OUTPUT_NAME, dims_out, self.info.opset)


SPATIAL_NAMES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}


def dynamic_dims(other: dict[fx.Node, list[tuple[int, ...]]], graph: fx.Graph, dims_in: list[Any],
                 dims_out: list[Any]) -> tuple[list[Any], list[Any]]:
    """The graph input's and output's dimensions with a dynamic height and width: the input's spatial ones
    named (``height``, ``width``), an output dimension that follows them named like the input's it equals
    at both probe sizes (a segmenter's map), else ``out_<i>`` (a detector's anchor count)."""
    placeholder = next(n for n in graph.nodes if n.op == "placeholder")
    output = next(n for n in graph.nodes if n.op == "output").args[0]
    in_other, out_other = other[placeholder][0], other[output][0]
    spatial = len(dims_in) - 2
    names = SPATIAL_NAMES.get(spatial, tuple(f"spatial_{i}" for i in range(spatial)))
    symbols = {}  # input dimension -> its name
    new_in = list(dims_in)
    for i, name in zip(range(2, len(dims_in)), names):
        new_in[i] = name
        symbols[i] = (dims_in[i], in_other[i], name)
    new_out = list(dims_out)
    for i in range(1, len(dims_out)):
        if dims_out[i] == out_other[i]:
            continue
        same = [name for j, (a, b, name) in sorted(symbols.items(), key=lambda kv: kv[0] != i)  # same place first
                if (a, b) == (dims_out[i], out_other[i])]
        new_out[i] = same[0] if same else f"out_{i}"
    return new_in, new_out
