"""The cost model: per-layer MACs and weight counts measured with forward hooks, and the paper's figures.

- paper cost (the paper's "Cost" column): sum(w_bits * numel) / (32 * sum(numel)) over the searchable
  layers' weights (uniform 5 bit: 5/32 = 0.1563);
- BitOPs: sum over every conv/linear of MACs * w_bits * a_bits, absolute and as a ratio to 32x32 bits;
- size: bytes of the model at its assigned bits (quantized weights packed at their bits, every other
  parameter as float32);
- file: bytes of the exported ONNX file (packed weight storage, ``proqha.quant.storage``): each layer's
  weights at their stored bits, every other parameter as float32, and what a written file measured beyond
  that (``FileModel``: graph structure, scales, zero points, biases, metadata, measured by the caller).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from proqha.latency_model import LatencyModel
from proqha.quant.convert import quant_layers
from proqha.quant.quantizers import Quantizer
from proqha.quant.storage import clamped_activation, stored_bits, stored_bytes

FLOAT_BITS = 32


def format_ratio(value: float, digits: int = 4) -> str:
    """A cost ratio as the paper prints it: rounded half up (5/32 = 0.15625 -> "0.1563")."""
    return str(Decimal(repr(value)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


@dataclass
class LayerCost:
    """One conv/linear layer: work per sample, weight count and its bits."""

    name: str
    kind: str
    macs: int
    params: int
    w_bits: int
    a_bits: int
    searchable: bool

    @property
    def bitops(self) -> int:
        return self.macs * self.w_bits * self.a_bits

    @property
    def weight_bytes(self) -> int:
        return math.ceil(self.params * self.w_bits / 8)

    @property
    def file_bytes(self) -> int:
        """Its weights as the exported file stores them (packed: 2, 4, 8 or 32 bits each, whole bytes)."""
        return stored_bytes(self.params, self.w_bits)


@dataclass(frozen=True)
class FileModel:
    """What an exported file holds beyond its weights' payload (``LayerCost.file_bytes``) and the other
    parameters as float32, measured on written files of one model (``proqha.export.file_size.measure_file_model``):
    ``overhead`` at the bits it was measured at, and per layer the bytes its structure adds (or removes) when
    its weights move to another stored width (``weights``: stored bits -> bytes) or its input activation to a
    clamped or unclamped grid (``activations``: ``clamped_activation`` -> bytes), each measured with every
    searchable layer moved there at once (the layers' changes add up). ``recorded``: the bytes the file's
    metadata spends on a cost report's figures (their digits vary with the bits), ``recorded_start`` its
    value where the file was measured."""

    overhead: int
    weights: Mapping[str, Mapping[int, int]]
    activations: Mapping[str, Mapping[bool, int]]
    recorded: Callable[["CostReport"], int] | None = None
    recorded_start: int = 0

    def extra_bytes(self, report: "CostReport") -> int:
        """The bytes beyond payload and float parameters of the file of ``report``'s bits."""
        moved = sum(self.weights.get(layer.name, {}).get(stored_bits(layer.w_bits), 0)
                    + self.activations.get(layer.name, {}).get(clamped_activation(layer.a_bits), 0)
                    for layer in report.layers)
        digits = self.recorded(report) - self.recorded_start if self.recorded is not None else 0
        return self.overhead + moved + digits


FileMeasurer = Callable[[nn.Module, tuple[int, ...], "Path | None", "tuple[Path, int] | None"], FileModel]
"""Measures a model's ``FileModel`` at its bits (input size; the checkpoint it came from, or None; the checkpoint
and step the predicted files will be exported from, which their metadata records, or None): injected by the
callers that may export (the CLI, the API), since the core never imports ``proqha.export``."""


@dataclass
class CostReport:
    """Per-layer costs and the totals the paper reports, for one input size."""

    input_size: tuple[int, ...]
    layers: list[LayerCost]
    other_params: int
    file_model: FileModel | None = None  # measured on a written file; None: ``file_bytes`` has no overhead
    latency_model: LatencyModel | None = None  # measured on an engine; None: no ``latency_ms``

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def paper_cost(self) -> float:
        chosen = [layer for layer in self.layers if layer.searchable] or self.layers
        total = sum(layer.params for layer in chosen)
        return sum(layer.w_bits * layer.params for layer in chosen) / (FLOAT_BITS * total) if total else 0.0

    @property
    def bitops(self) -> int:
        return sum(layer.bitops for layer in self.layers)

    @property
    def bitops_ratio(self) -> float:
        return self.bitops / (self.macs * FLOAT_BITS * FLOAT_BITS) if self.macs else 0.0

    @property
    def size_bytes(self) -> int:
        return sum(layer.weight_bytes for layer in self.layers) + 4 * self.other_params

    @property
    def file_bytes(self) -> int:
        """The predicted exported file (packed storage): stored weights, other parameters as float32, and the
        measured structure (``file_model``; without one, a lower bound)."""
        extra = self.file_model.extra_bytes(self) if self.file_model is not None else 0
        return sum(layer.file_bytes for layer in self.layers) + 4 * self.other_params + extra

    @property
    def latency_ms(self) -> float:
        """The predicted latency (ms) on the engine the latency model was measured on (NaN without one)."""
        return self.latency_model.predict(self) if self.latency_model is not None else math.nan

    @property
    def float_size_bytes(self) -> int:
        return 4 * (sum(layer.params for layer in self.layers) + self.other_params)

    def with_bits(self, bits: Mapping[str, Mapping[str, int]]) -> "CostReport":
        """The same layers at other bits (layers not in ``bits`` keep theirs): no forward pass needed."""
        layers = [replace(layer, w_bits=bits[layer.name]["w"], a_bits=bits[layer.name]["a"])
                  if layer.name in bits else layer for layer in self.layers]
        return CostReport(self.input_size, layers, self.other_params, self.file_model, self.latency_model)

    def metric(self, name: str) -> float:
        """One scalar cost by name: "paper" (the paper cost), "bitops", "file" (predicted file bytes) or
        "latency" (predicted ms)."""
        if name == "paper":
            return self.paper_cost
        if name == "bitops":
            return float(self.bitops)
        if name == "file":
            return float(self.file_bytes)
        if name == "latency":
            return self.latency_ms
        raise ValueError(f"unknown cost metric {name!r}")

    def totals(self) -> dict[str, Any]:
        return {
            "paper_cost": self.paper_cost,
            "macs": self.macs,
            "bitops": self.bitops,
            "gbitops": self.bitops / 1e9,
            "bitops_ratio": self.bitops_ratio,
            "size_bytes": self.size_bytes,
            "float_size_bytes": self.float_size_bytes,
        }

    def to_dict(self) -> dict[str, Any]:
        rows = [asdict(layer) | {"bitops": layer.bitops} for layer in self.layers]
        return {"input_size": list(self.input_size), "layers": rows, "totals": self.totals()}


def _layer_bits(name: str, qlayers: dict[str, Any]) -> tuple[int, int, bool]:
    layer = qlayers.get(name)
    if layer is None:
        return FLOAT_BITS, FLOAT_BITS, True
    return layer.w_bits, layer.a_bits, layer.searchable


@torch.no_grad()
def cost_report(model: nn.Module, input_size: Sequence[int]) -> CostReport:
    """Measure every Conv2d/Linear of ``model`` (quantized or float) at ``input_size`` (C, H, W).

    A copy of the model runs one forward pass on zeros, so the model's own state (quantizer ranges,
    BN statistics) is untouched.
    """
    probe = copy.deepcopy(model).eval()
    macs: dict[str, int] = {}
    hooks = []
    names = {}
    for name, module in probe.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            names[module] = name

            def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor, name: str = name) -> None:
                if isinstance(mod, nn.Conv2d):
                    per_out = (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
                else:
                    per_out = mod.in_features
                macs[name] = macs.get(name, 0) + output.numel() * per_out  # batch of one

            hooks.append(module.register_forward_hook(hook))
    device = next((p.device for p in probe.parameters()), torch.device("cpu"))
    probe(torch.zeros(1, *input_size, device=device))
    for h in hooks:
        h.remove()
    qlayers = quant_layers(probe)
    layers, counted = [], set()
    for module, name in names.items():
        w, a, searchable = _layer_bits(name, qlayers)
        kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
        layers.append(LayerCost(name, kind, macs.get(name, 0), module.weight.numel(), w, a, searchable))
        counted.add(id(module.weight))
    other = sum(p.numel() for p in probe.parameters() if id(p) not in counted)
    other += sum(m.alpha.numel() for m in probe.modules() if isinstance(m, Quantizer) and m.tracks_range)  # buffers
    return CostReport(tuple(input_size), layers, other)


def arch_cost_report(arch: str, input_size: Sequence[int] | None = None, num_classes: int | None = None,
                     bits: int = 8, edge_layers: str = "int8", bits_file: str | None = None) -> CostReport:
    """The cost report of a registered (or import-path) architecture quantized at ``bits``, or at the bits of
    ``bits_file``; ``input_size`` (C, H, W) defaults to the architecture's own."""
    from proqha.errors import OptionError, ProqhaError
    from proqha.models import create_model, get_model_spec
    from proqha.quant import BitConfig, QuantConfig, quantize_model

    size = tuple(input_size) if input_size else get_model_spec(arch).input_size
    if size is None:
        raise OptionError("input_size", f"is needed (C,H,W): arch {arch} is an import path", others=("arch",))
    if num_classes is not None and num_classes < 1:
        raise OptionError("num_classes", f"must be positive, got {num_classes}")
    try:
        qconfig = QuantConfig(bits=bits, edge_layers=edge_layers)
    except OptionError:
        raise
    except ValueError as exc:
        raise ProqhaError(str(exc)) from None
    model = quantize_model(create_model(arch, num_classes=num_classes, in_channels=size[0]), qconfig, size)
    if bits_file is not None:
        config = BitConfig.load(bits_file)
        try:
            config.apply(model)
        except ProqhaError as exc:
            raise OptionError("bits_file", f"{bits_file} does not fit: {exc} (is arch {arch} the model it was made "
                              "for?)", others=("arch",)) from None
    try:
        return cost_report(model, size)
    except RuntimeError as exc:
        raise ProqhaError(f"{arch} cannot run at input size {size}: {str(exc).splitlines()[0]}") from None
