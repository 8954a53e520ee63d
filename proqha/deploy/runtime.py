"""The common interface of inference runtimes (``Runtime``), the engine names, and host-clock timing.
``proqha.deploy.bench.make_runtime`` builds one by name."""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

ENGINES = ("ort", "trt", "torch")


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
