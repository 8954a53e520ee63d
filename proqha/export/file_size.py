"""The file as a figure: an exported graph's size on disk and its ratio to the fp32 graph of the same model,
written into the file's own metadata next to the paper cost."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import onnx
from torch import nn

from proqha.export.graph_builder import set_metadata
from proqha.export.onnx_export import ExportInfo, cost_metadata, export_onnx, graph_metadata

if TYPE_CHECKING:
    from proqha.cost import CostReport, FileModel

FILE_BYTES, FP32_BYTES, RATIO = "proqha.file_bytes", "proqha.fp32_graph_bytes", "proqha.file_ratio_fp32"


def fp32_graph_bytes(model: nn.Module, input_size: tuple[int, ...], extra: dict[str, str] | None = None) -> int:
    """The size of the float graph file of ``model`` (every quantizer off, BatchNorm folded), as the export
    stage writes it (format ``onnx-fp32``) with ``extra`` metadata: the baseline of a file's size ratio."""
    from proqha.quant import float_twin

    twin = float_twin(model)
    proto, info = export_onnx(twin, input_size, quantized=False)
    return len(add_metadata(proto, twin, info, input_size, extra or {}, "onnx-fp32"))


CLASS_NAMES = "class_names"  # metadata key: what the outputs mean, a JSON list of the classes' names


def class_names_metadata(class_names: Sequence[str] | None) -> dict[str, str]:
    """The metadata naming a file's outputs (``{"class_names": JSON list}``; empty without names)."""
    return {} if class_names is None else {CLASS_NAMES: json.dumps([str(n) for n in class_names])}


def source_metadata(state: Any, checkpoint: Path, step: int | None) -> dict[str, str]:
    """Where an exported file came from (a ``proqha.checkpoint.Checkpoint``): architecture, dataset,
    checkpoint and search step, and the names of its outputs when the checkpoint's data has them."""
    return {"proqha.arch": state.recipe["arch"], "proqha.dataset": state.dataset,
            "proqha.source": str(checkpoint), "proqha.step": "" if step is None else str(step)} \
        | class_names_metadata(state.data.get("class_names"))


def exported_file(checkpoint: Path, step: int | None = None, weights: str = "packed") -> bytes:
    """The bytes ``export_run`` writes for a checkpoint (default options, ``weights`` storage), without
    validating it."""
    from proqha.recipe import load_model

    model, state = load_model(checkpoint)
    proto, info = export_onnx(model, state.input_size, weights=weights)
    return add_metadata(proto, model, info, state.input_size, source_metadata(state, checkpoint, step))


def stamp_file_size(proto: onnx.ModelProto, fp32_bytes: int | None) -> bytes:
    """Add the file's own size and its ratio to ``fp32_bytes`` (None: the file is the fp32 graph) to its
    metadata; returns the file's bytes, whose length is the size written (its digits count too)."""
    props = proto.metadata_props
    keep = [(p.key, p.value) for p in props if p.key not in (FILE_BYTES, FP32_BYTES, RATIO)]
    size = proto.ByteSize()
    for _ in range(5):  # converges in one or two rounds: only the number of digits can move it
        del props[:]
        base = size if fp32_bytes is None else fp32_bytes
        set_metadata(proto, dict(keep) | {FILE_BYTES: str(size), FP32_BYTES: str(base), RATIO: f"{size / base:.6f}"})
        data = proto.SerializeToString()
        if len(data) == size:
            return data
        size = len(data)
    raise AssertionError("the file size did not settle")  # unreachable: each round changes at most digits


def add_metadata(proto: onnx.ModelProto, model: nn.Module, info: ExportInfo, input_size: tuple[int, ...],
                 extra: dict[str, str], fmt: str = "onnx") -> bytes:
    """Write everything an exported file says about itself (``graph_metadata``, then ``extra``: where it
    came from) and its size against the fp32 graph; returns the file's bytes."""
    set_metadata(proto, graph_metadata(model, info, tuple(input_size), fmt) | extra)
    return stamp_file_size(proto, fp32_graph_bytes(model, tuple(input_size), extra) if info.quantized else None)


MAX_INT_FACTOR = 127  # the largest k of ``proqha.quant.grid.weight_int_factor`` (k * qmax <= 127)
WEIGHT_PROBES = ((2, 2), (4, 4), (8, 7))  # stored width -> the bits a probe sets (7: int8, and DoReFa exports it)
ACTIVATION_PROBES = ((True, 4), (False, 8))  # clamped -> the bits a probe sets


def measure_file_model(model: nn.Module, input_size: Sequence[int], source: Path | None = None,
                       exported_as: tuple[Path, int] | None = None) -> "FileModel":
    """What the cost model needs to predict ``model``'s exported file at any bits (``proqha.cost.FileModel``):
    the file ``proqha export`` writes (packed weights) at the model's bits (with ``source``'s metadata when it
    names a proqha checkpoint, recording the checkpoint and step of ``exported_as`` when given: where the
    predicted files will come from) less its predicted payload, and per searchable layer the bytes its nodes and constants gain
    when its weights move to another stored width or its input to a clamped (or unclamped) grid, read off
    graphs with every searchable layer moved at once (each node and initializer belongs to the layer its
    name starts with). The metadata's digits that move with the bits are predicted (the cost figures,
    ``recorded_bytes``) or bounded (the weight factors, the file's size), so the prediction is at least the
    file written, by a few bytes. The model is untouched (a CPU copy is exported)."""
    from proqha.cost import FileModel, cost_report
    from proqha.quant import BitConfig, searchable_layers
    from proqha.quant.storage import FULL_PRECISION, clamped_activation, stored_bits, stored_bytes

    size = tuple(input_size)
    probe = copy.deepcopy(model).cpu().eval()
    extra: dict[str, str] = {}
    if source is not None:
        from proqha.weights import read_checkpoint

        state = read_checkpoint(source)
        if state is not None:
            extra = source_metadata(state, *exported_as) if exported_as else source_metadata(state, Path(source), None)
    start = BitConfig.from_model(probe).to_dict()
    names = [n for n in searchable_layers(probe) if n in start]
    proto, info = export_onnx(probe, size, weights="packed")
    base = _layer_bytes(proto, names)
    written = len(add_metadata(proto, probe, info, size, extra))
    start_cost = cost_report(probe, size)
    params = {layer.name: layer.params for layer in start_cost.layers}
    # the metadata records each layer's weight factor k (1..127: up to 3 digits, ``weight_int_factor``) and the
    # file's own size: their digits grow by at most this much, added so that a prediction never falls short
    slack = sum(len(str(MAX_INT_FACTOR)) - len(str(layer.int_factor)) for layer in info.layers.values()) + 1
    overhead = written - start_cost.file_bytes + slack

    def structure(parts: dict[str, int], name: str, w_bits: int) -> int:  # a layer's bytes beyond its payload
        return parts.get(name, 0) - stored_bytes(params[name], w_bits)

    def moved(kind: str, to_bits: int, key: Any) -> dict[str, int]:
        movable = [n for n in names if start[n][kind] != FULL_PRECISION and key(start[n][kind]) != key(to_bits)]
        if not movable:
            return {}
        BitConfig({n: kb | ({kind: to_bits} if n in movable else {}) for n, kb in start.items()}).apply(probe)
        try:
            parts = _layer_bytes(export_onnx(probe, size, weights="packed")[0], names)
        finally:
            BitConfig(start).apply(probe)
        w_after = {n: to_bits if kind == "w" else start[n]["w"] for n in movable}
        return {n: structure(parts, n, w_after[n]) - structure(base, n, start[n]["w"]) for n in movable}

    weight_deltas: dict[str, dict[int, int]] = {n: {} for n in names}
    act_deltas: dict[str, dict[bool, int]] = {n: {} for n in names}
    for width, bits in WEIGHT_PROBES:
        for name, delta in moved("w", bits, stored_bits).items():
            weight_deltas[name][width] = delta
    for clamped, bits in ACTIVATION_PROBES:
        for name, delta in moved("a", bits, clamped_activation).items():
            act_deltas[name][clamped] = delta
    return FileModel(overhead, weight_deltas, act_deltas, recorded_bytes, recorded_bytes(start_cost))


def recorded_bytes(cost: "CostReport") -> int:
    """The bytes of the cost figures a file's metadata records (``cost_metadata``)."""
    return sum(len(value) for value in cost_metadata(cost).values())


def _layer_bytes(proto: onnx.ModelProto, names: Sequence[str]) -> dict[str, int]:
    """The serialized bytes of each layer's nodes and initializers (those whose name is the layer's or starts
    with it and a dot), with their field framing."""
    owners = set(names)
    out: dict[str, int] = {}
    for item in [*proto.graph.node, *proto.graph.initializer]:
        parts = item.name.split(".")
        owner = next((p for p in (".".join(parts[:i]) for i in range(len(parts), 0, -1)) if p in owners), None)
        if owner is not None:
            n = item.ByteSize()
            out[owner] = out.get(owner, 0) + n + 1 + _varint_len(n)
    return out


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)
