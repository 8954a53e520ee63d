"""The common interface of inference runtimes (``Runtime``), the engine names, the engine check (the one
guard for TensorRT and OpenVINO), and host-clock timing. ``proqha.deploy.bench.make_runtime`` builds one
runtime by name."""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

ENGINES = ("ort", "openvino", "trt", "torch")
ONNX_ENGINES = ("ort", "openvino")  # the engines that read an ONNX file as it is


def check_engines(engines: list[str], option: str = "engine") -> list[str]:
    """``engines`` if each is in ``ENGINES`` and the optional package it needs imports (TensorRT with a GPU,
    OpenVINO), else one ProqhaError (an OptionError naming ``option`` for an unknown name): before any work,
    so a long run does not stop at its last stage. The one engine check, and with ``["trt"]`` the one
    TensorRT guard."""
    from proqha.errors import OptionError

    for e in engines:
        if e not in ENGINES:
            raise OptionError(option, f"must be one of {', '.join(ENGINES)}, got {e!r}")
    if "trt" in engines:
        from proqha.deploy.runtime_trt import require_tensorrt

        require_tensorrt()
    if "openvino" in engines:
        from proqha.deploy.runtime_openvino import require_openvino

        require_openvino()
    return engines


class Runtime(Protocol):
    """Load once, then run batches. ``timed_run`` returns (output, seconds) measured the runtime's way."""

    name: str

    def run(self, x: np.ndarray) -> np.ndarray: ...

    def timed_run(self, x: np.ndarray) -> tuple[np.ndarray, float]: ...

    def describe(self) -> dict[str, Any]: ...


class WallClockTimed:
    """``timed_run`` by the host clock around ``run`` (runtimes that return when the work is done)."""

    def timed_run(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        out = self.run(x)  # type: ignore[attr-defined]
        return out, time.perf_counter() - t0
