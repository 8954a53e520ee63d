"""onnxruntime: the best available execution provider (TensorRT, CUDA, then CPU), graph optimizations on."""

from __future__ import annotations

import platform
from typing import Any

import numpy as np

from proqha.deploy.runtime import WallClockTimed
from proqha.export.ort_session import ort_session
from proqha.export.pair_sums import cpu_int8_path

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OrtRuntime(WallClockTimed):
    """An onnxruntime session over an ONNX model's bytes."""

    name = "ort"

    def __init__(self, model_bytes: bytes, threads: int | None = None, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        chosen = providers or [p for p in PREFERRED if p in available]
        self.threads = threads
        self.session = ort_session(model_bytes, threads=threads, spin=False, providers=chosen)
        self.input = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"engine": self.name, "onnxruntime": ort.__version__, "providers": self.session.get_providers(),
                "threads": self.threads, "device": platform.processor() or platform.machine(),
                "int8_path": cpu_int8_path().description}
