"""The file as a figure: an exported graph's size on disk and its ratio to the fp32 graph of the same model,
written into the file's own metadata next to the paper cost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import onnx
from torch import nn

from proqha.export.graph_builder import set_metadata
from proqha.export.onnx_export import ExportInfo, export_onnx, graph_metadata

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
