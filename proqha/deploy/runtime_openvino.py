"""OpenVINO (``pip install 'proqha[openvino]'``): reads proqha's QDQ ONNX files and compiles them for the CPU.

It reads int8 weight storage; of the packed forms, OpenVINO 2026.4 cannot read INT2 and runs a conv whose
INT4 weights are widened by Cast in f32, so the bench gives it the graph with int8 weight storage.

OpenVINO turns DequantizeLinear -> Conv -> QuantizeLinear chains into its own low-precision kernels; which
layers it runs in int8 is read from the compiled model's runtime graph (``runtimePrecision`` of each
Convolution and FullyConnected node), as ``optimized_model_filepath`` shows it for onnxruntime.
"""

from __future__ import annotations

import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from proqha.deploy.runtime import WallClockTimed
from proqha.errors import OptionError, ProqhaError

LAYER_TYPES = ("Convolution", "FullyConnected", "MatMul", "GroupConvolution")
INTEGER_PRECISIONS = ("u8", "i8")


def require_openvino() -> Any:
    """The ``openvino`` module, or one clear ProqhaError where it is missing."""
    try:
        import openvino
    except ImportError:
        raise OptionError("engine", "openvino needs OpenVINO: pip install 'proqha[openvino]'") from None
    return openvino


@dataclass(frozen=True)
class OpenVinoLayers:
    """The conv/linear layers of a compiled model by the precision OpenVINO runs them in."""

    integer: int
    float: int


def runtime_info(op: Any, key: str) -> str:
    """A runtime-graph node's ``rt_info`` entry as text ("" where it has none)."""
    info = op.get_rt_info()
    return info[key].astype(str) if key in info else ""


def layer_precisions(compiled: Any) -> OpenVinoLayers:
    """Count the compiled model's conv/linear nodes running in u8/i8 against the rest."""
    integer = other = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        kind, precision = runtime_info(op, "layerType"), runtime_info(op, "runtimePrecision").lower()
        if kind not in LAYER_TYPES:
            continue
        if precision in INTEGER_PRECISIONS:
            integer += 1
        else:
            other += 1
    return OpenVinoLayers(integer, other)


def _reason(exc: Exception) -> str:
    """The last line of an OpenVINO exception (its message; the lines before name its source files)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


class OpenVinoRuntime(WallClockTimed):
    """An OpenVINO CPU compilation of an ONNX model's bytes (latency hint, ``threads`` inference threads)."""

    name = "openvino"

    def __init__(self, model_bytes: bytes, threads: int | None = None) -> None:
        ov = require_openvino()
        core = ov.Core()
        with tempfile.TemporaryDirectory() as tmp:  # its ONNX frontend reads files
            path = Path(tmp) / "model.onnx"
            path.write_bytes(model_bytes)
            try:
                model = core.read_model(str(path))
            except RuntimeError as exc:
                hint = (": OpenVINO reads no INT2 weights; export it with int8 weight storage (weights int8)"
                        if b"weight_int2" in model_bytes else "")
                raise ProqhaError(f"OpenVINO cannot read this graph ({_reason(exc)}){hint}") from None
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        self.threads = threads
        self.version = ov.__version__ if hasattr(ov, "__version__") else ov.get_version()
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:
            raise ProqhaError(f"OpenVINO cannot compile this graph for the CPU ({_reason(exc)})") from None
        self.request = self.compiled.create_infer_request()
        self.device = core.get_property("CPU", "FULL_DEVICE_NAME")

    def run(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return self.request.get_output_tensor(0).data.copy()

    def layers(self) -> OpenVinoLayers:
        return layer_precisions(self.compiled)

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "openvino": self.version, "threads": self.threads,
                "device": self.device or platform.processor() or platform.machine()}
