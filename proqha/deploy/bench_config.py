"""The options of a bench (``BenchOptions``), each declared once (default, help text): ``proqha bench``'s flags,
``bench_run``'s and the pipeline's defaults and the Python API's read them. Importable without torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from proqha.options import option

# The Python API benches a user's own module at batch 1 and 8 by default: a first look in seconds; a run's bench
# (the command, the pipeline) adds a throughput batch of 32.
API_BENCH_BATCHES = (1, 8)


@dataclass
class BenchOptions:
    """What to time and how (the run's models on each engine and batch size)."""

    run: Path | None = option(None, "Search, train or quantize run, or a checkpoint (default: the latest search run, "
                                    "else the newest train or quantize run).")
    engines: tuple[str, ...] = option(("ort",), "ort, openvino, trt or torch; repeat for several (default ort).")
    batches: tuple[int, ...] = option((1, 8, 32), "Batch sizes, comma-separated.")
    warmup: int = option(5, "Untimed runs before timing.")
    iters: int = option(50, "Timed runs per batch size.")
    seconds: float | None = option(None, "Time budget per batch size instead of --iters.")
    threads: int | None = option(None, "onnxruntime intra-op threads (default: its own).")
    samples: int = option(256, "Test images for each accuracy figure.")
    step: int | None = option(None, "Search step (default: the last).")
    best_under_cost: float | None = option(None, "The most accurate step at or below this paper cost.")
    all_steps: bool = option(False, "Export and time every step of the search run.")
    plot: bool = option(False, "Write latency_vs_bitops.png and accuracy_vs_latency.png.")
    device: str = option("auto", "Device of the torch engine: auto, cpu, cuda, cuda:N.")
    out_dir: Path | None = option(None, "Where bench.json/bench.csv go (default RUN/bench).")
    int8_kernels: str = option("portable", "The onnxruntime graph form: portable (exact on every CPU) or vnni (exact "
                                           "only with VNNI/AMX or on ARM64).")
    weights: str = option("packed", "Weight storage of the onnxruntime graphs: packed (INT2/INT4 where the grid fits) "
                                    "or int8.")
    anchor: bool = option(True, "Time onnxruntime's quantize_static of the fp32 twin beside them (ort and openvino "
                                "engines).")
