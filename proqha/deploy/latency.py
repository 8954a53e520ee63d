"""Latency statistics of a runtime: warm-up discarded, then a fixed count or a time budget of runs."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from proqha.deploy.runtime import Runtime

MIN_RUNS = 3


@dataclass
class LatencyStats:
    """Per-call latency in milliseconds over ``runs`` timed calls of one batch size."""

    batch: int
    runs: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return self.batch / (self.median_ms / 1e3) if self.median_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"throughput": self.throughput}


def stats_from(times_s: list[float], batch: int) -> LatencyStats:
    """Summary statistics of per-call times (seconds)."""
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    return LatencyStats(batch, len(ms), float(np.median(ms)), float(np.percentile(ms, 90)),
                        float(np.percentile(ms, 99)), float(ms.mean()), float(ms.std()), float(ms.min()),
                        float(ms.max()))


def measure(runtime: Runtime, x: np.ndarray, warmup: int = 5, iters: int | None = 50,
            seconds: float | None = None) -> LatencyStats:
    """Time ``runtime`` on ``x``: ``warmup`` untimed calls, then ``iters`` calls or ``seconds`` of calls."""
    for _ in range(warmup):
        runtime.timed_run(x)
    times: list[float] = []
    deadline = time.perf_counter() + seconds if seconds else None
    while True:
        times.append(runtime.timed_run(x)[1])
        if deadline is not None:
            if time.perf_counter() >= deadline and len(times) >= MIN_RUNS:
                break
        elif len(times) >= max(iters or MIN_RUNS, 1):
            break
    return stats_from(times, len(x))
