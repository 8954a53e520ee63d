"""The API's export stage: a validated QDQ ONNX file of a quantized model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from torch import nn

from proqha.api.common import Batch, InputSize, input_shape, model_device, random_batches
from proqha.errors import ExportError, ProqhaError


def export_onnx(qmodel: nn.Module, path: str | Path, input_size: InputSize,
                parity_data: Iterable[Batch] | None = None, *, profile: str = "ort",
                int8_kernels: str = "portable", weights: str = "packed", check: bool = True,
                reference: bool = True) -> Any:
    """Write ``qmodel`` as a QDQ ONNX graph (dynamic batch) to ``path``, validated first.

    ``input_size``: (C, H, W), or an example batch. Validation runs the ONNX checker, weight-range and
    int16 pair-sum checks, counts the int8 kernels onnxruntime runs, and measures parity with PyTorch
    (onnxruntime and, with ``reference``, the ONNX reference evaluator) on ``parity_data`` (``(x, y)``
    batches; default 64 seeded random inputs, whose accuracy figures mean nothing). ``profile``: "ort"
    (exact, rules enforced) or "trt" (TensorRT's int8-only form, measured only). ``weights``: "packed"
    (2-bit weights as INT2, 3/4-bit as INT4: opset 25/21, the same int8 kernels) or "int8" (opset 19).
    The file's metadata holds its size and its ratio to the fp32 graph's. Returns the
    ``ValidationReport`` (None with ``check=False``); the file (and ``<stem>.parity.json`` beside it) is
    written atomically only when it passes, else ``ExportError`` lists the failures.
    """
    from proqha.export.file_size import add_metadata
    from proqha.export.onnx_export import export_onnx as build_onnx
    from proqha.export.validate import validate_export
    from proqha.files import atomic_write_bytes, atomic_write_json

    size = input_shape(input_size)
    path = Path(path)
    if path.is_dir():
        raise ProqhaError(f"export_onnx: {path} is a folder")
    proto, info = build_onnx(qmodel, size, profile=profile, int8_kernels=int8_kernels, weights=weights)
    data = add_metadata(proto, qmodel, info, size, {"proqha.source": "python api"})
    report = None
    if check:
        batches = parity_data if parity_data is not None else random_batches(size, model_device(qmodel))
        report = validate_export(proto, info, qmodel, batches, reference=reference)
        if not report.ok:
            raise ExportError(f"export_onnx: {len(report.failures)} check(s) failed, nothing written to {path}: "
                              + "; ".join(report.failures), report)
    atomic_write_bytes(path, data)
    if report is not None:
        atomic_write_json(path.with_name(path.stem + ".parity.json"), report.to_dict() | {"model": str(path)})
    return report
