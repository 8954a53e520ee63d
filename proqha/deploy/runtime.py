"""The common interface of inference runtimes (``Runtime``), the engine names, and host-clock timing.
``proqha.deploy.bench.make_runtime`` builds one by name."""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

ENGINES = ("ort", "openvino", "trt", "torch")
ONNX_ENGINES = ("ort", "openvino")  # the engines that read an ONNX file as it is


def check_engines(engines: list[str], option: str = "--engine") -> list[str]:
    """``engines`` if each is in ``ENGINES`` and the optional package it needs (TensorRT, OpenVINO) imports,
    else one ProqhaError: before any work, so a long run does not stop at its last stage."""
    from proqha.errors import ProqhaError

    for e in engines:
        if e not in ENGINES:
            raise ProqhaError(f"{option} must be one of {', '.join(ENGINES)}, got {e!r}")
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
