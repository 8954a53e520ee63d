"""Latency statistics of a runtime: warm-up discarded, then a fixed count or a time budget of runs."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from proqha.deploy.runtime import Runtime

MIN_RUNS = 3
ROUNDS = 10  # turns of measure_interleaved


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
    return measure_interleaved([runtime], x, warmup, iters, seconds)[0]


def measure_interleaved(runtimes: Sequence[Runtime], x: np.ndarray, warmup: int = 5, iters: int | None = 50,
                        seconds: float | None = None, rounds: int = ROUNDS) -> list[LatencyStats]:
    """Time each runtime on ``x`` as ``measure`` does (``iters`` calls or ``seconds`` of calls each), in
    ``rounds`` turns that visit every runtime once, so that a drift of the machine's speed (other load, clock)
    falls on all of them alike and their ratios stay fair."""
    for runtime in runtimes:
        for _ in range(warmup):
            runtime.timed_run(x)
    total = max(iters or MIN_RUNS, 1)
    rounds = max(1, rounds if seconds else min(rounds, total))
    shares = [total // rounds + (r < total % rounds) for r in range(rounds)]
    times: list[list[float]] = [[] for _ in runtimes]
    for r in range(rounds):
        left = rounds - 1 - r  # turns still to come, a call each at least
        for runtime, own in zip(runtimes, times):
            if seconds:  # a time slice per turn; at least MIN_RUNS calls in all
                deadline = time.perf_counter() + seconds / rounds
                while True:
                    own.append(runtime.timed_run(x)[1])
                    if time.perf_counter() >= deadline and len(own) + left >= MIN_RUNS:
                        break
            else:
                own.extend(runtime.timed_run(x)[1] for _ in range(shares[r]))
    return [stats_from(own, len(x)) for own in times]


def least_block_medians(runtimes: Sequence[Runtime], x: np.ndarray, blocks: int, warmup: int = 5, rewarm: int = 2,
                        iters: int | None = 50, seconds: float | None = None) -> list[float]:
    """Each runtime's least median (ms) over ``blocks`` interleaved timings (``measure_interleaved``; the
    first after ``warmup`` calls each, the others after ``rewarm``): one slow spell of the machine then
    decides no figure."""
    runs = [measure_interleaved(runtimes, x, warmup if b == 0 else rewarm, iters, seconds) for b in range(max(blocks, 1))]
    return [min(run[i].median_ms for run in runs) for i in range(len(runtimes))]
