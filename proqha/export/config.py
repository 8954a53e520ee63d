"""The options of an export, each declared once (default, help text, valid values): ``ExportConfig``, which
``stage.export_run`` takes and the ``proqha export`` command's flags and the API's defaults read.
Importable without torch or onnx, so the CLI reads it before any heavy import."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from proqha.options import check_options, option

FORMATS = ("onnx", "onnx-fp32", "trt")


@dataclass
class ExportConfig:
    """What to export and how. The choices of ``profile``, ``int8_kernels`` and ``weights`` are checked against
    their tables (``qdq.PROFILES``, ``quant.grid.INT8_KERNELS``, ``qdq.WEIGHT_STORAGES``) by ``resolved``."""

    run: Path | None = option(None, "Search, train or quantize run, or a checkpoint (default: the latest search "
                                    "run, else the newest train or quantize run).")
    step: int | None = option(None, "Search step to export (default: the last).")
    best_under_cost: float | None = option(None, "Export the most accurate step at or below this paper cost.")
    fmt: str = option("onnx", "onnx (QDQ, integer), onnx-fp32 (the float graph of the same model), or trt (a "
                              "TensorRT engine, beside its trt-profile ONNX).", choices=FORMATS)
    profile: str = option("ort", "ort (onnxruntime, exact) or trt (TensorRT's int8-only rules).")
    out: Path | None = option(None, "Output file (default RUN/export/model[-stepN][-profile].onnx).")
    check: bool = option(True, "Validate (checker, weight ranges, int8 kernels, parity) before writing.")
    samples: int = option(256, "Test images for the parity check.", low=1)
    force: bool = option(False, "Overwrite an existing output file.")
    device: str = option("cpu", "Device of the PyTorch model during export and parity: auto, cpu, cuda, cuda:N.")
    int8_kernels: str = option("portable", "portable: exact on every CPU (a model trained portable, the default, "
                                           "runs int8 weights everywhere; a full-grid layer gets uint8 weights, "
                                           "slower U8U8 kernels); vnni: int8 weights everywhere, exact only on "
                                           "CPUs with VNNI/AMX or ARM64 for a full-grid model.")
    weights: str = option("packed", "packed: 2-bit weights as INT2, 3/4-bit as INT4 (opset 21/25, widened at load "
                                    "into the same int8 kernels); int8: int8 everywhere (opset 19, for runtimes "
                                    "that cannot read packed types). The trt profile stores int8.")
    dynamic_size: bool = option(False, "Height and width dynamic too, as the batch is (a network that runs at any "
                                       "size: a segmenter, a detector's heads); parity also checked at height x 2, width x 3.")

    def resolved(self) -> ExportConfig:
        """A copy with every option checked (OptionError naming the first bad one) and the profile its
        format implies (``trt`` for a TensorRT engine); the TensorRT guard runs for ``fmt="trt"``."""
        from proqha.export.stage import check_export_options

        check_options(self)
        return dataclasses.replace(self, profile=check_export_options(self.fmt, self.profile, self.int8_kernels,
                                                                      self.weights))
