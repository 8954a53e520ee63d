"""The API's export stage: a validated QDQ ONNX file of a quantized model (``proqha.export.stage``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from torch import nn

from proqha.api.common import Batch, InputSize, input_shape, model_device, random_batches
from proqha.export.config import ExportConfig
from proqha.options import default


def export_onnx(qmodel: nn.Module, path: str | Path, input_size: InputSize,
                parity_data: Iterable[Batch] | None = None, *, profile: str = default(ExportConfig, "profile"),
                int8_kernels: str = default(ExportConfig, "int8_kernels"),
                weights: str = default(ExportConfig, "weights"), check: bool = default(ExportConfig, "check"),
                reference: bool = True, dynamic_size: bool = default(ExportConfig, "dynamic_size")) -> Any:
    """Write ``qmodel`` as a QDQ ONNX graph (dynamic batch) to ``path``, validated first.

    ``input_size``: (C, H, W), or an example batch. Validation runs the ONNX checker, weight-range and
    int16 pair-sum checks, counts the int8 kernels onnxruntime runs, and measures parity with PyTorch
    (onnxruntime and, with ``reference``, the ONNX reference evaluator) on ``parity_data`` (``(x, y)``
    batches; default 64 seeded random inputs, whose accuracy figures mean nothing). ``profile``: "ort"
    (exact, rules enforced) or "trt" (TensorRT's int8-only form and graph rules; parity measured only).
    ``weights``: "packed" (2-bit weights as INT2, 3/4-bit as INT4: opset 25/21, the same int8 kernels) or
    "int8" (opset 19). ``dynamic_size``: height and width dynamic too (a network that runs at any size),
    parity measured as well at a second size (height x 2, width x 3) on 16 images of the parity data
    resized; refused in one line naming the operator that fixes the size.
    The file's metadata holds its size and its ratio to the fp32 graph's. Returns the
    ``ValidationReport`` (None with ``check=False``); the file (and ``<stem>.parity.json`` beside it) is
    written atomically only when it passes, else ``ExportError`` lists the failures (its
    ``report`` says what was measured).
    """
    from proqha.export.stage import export_model

    size = input_shape(input_size)
    batches = None
    if check:
        batches = parity_data if parity_data is not None else random_batches(size, model_device(qmodel))
    return export_model(qmodel, path, size, batches, profile=profile, int8_kernels=int8_kernels, weights=weights,
                        check=check, reference=reference, metadata={"proqha.source": "python api"},
                        dynamic_size=dynamic_size).report
