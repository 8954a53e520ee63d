"""`proqha bench`: measured latency next to the paper's cost figures, per engine and batch size
(``proqha.deploy.bench_run``), printed as one table (``proqha.cli.bench_report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from proqha.cli.bench_report import report
from proqha.cli.common import declared_option, err_console, handle_errors, parse_int_tuple
from proqha.deploy.bench_config import BenchOptions as B
from proqha.options import declared, default

BATCHES = ",".join(map(str, default(B, "batches")))


@handle_errors(flags={"engines": "--engine", "batches": "--batch"})
def bench(
    run: Annotated[Optional[Path], typer.Argument(help=declared(B, "run").help)] = None,
    engine: Annotated[Optional[list[str]], declared_option(B, "engines")] = None,
    batch: Annotated[str, declared_option(B, "batches")] = BATCHES,
    warmup: Annotated[int, declared_option(B, "warmup")] = default(B, "warmup"),
    iters: Annotated[int, declared_option(B, "iters")] = default(B, "iters"),
    seconds: Annotated[Optional[float], declared_option(B, "seconds")] = default(B, "seconds"),
    threads: Annotated[Optional[int], declared_option(B, "threads")] = default(B, "threads"),
    samples: Annotated[int, declared_option(B, "samples")] = default(B, "samples"),
    step: Annotated[Optional[int], declared_option(B, "step")] = default(B, "step"),
    best_under_cost: Annotated[Optional[float], declared_option(B, "best_under_cost")] = default(B, "best_under_cost"),
    all_steps: Annotated[bool, declared_option(B, "all_steps")] = default(B, "all_steps"),
    plot: Annotated[bool, declared_option(B, "plot")] = default(B, "plot"),
    device: Annotated[str, declared_option(B, "device")] = default(B, "device"),
    out_dir: Annotated[Optional[Path], declared_option(B, "out_dir")] = default(B, "out_dir"),
    int8_kernels: Annotated[str, declared_option(B, "int8_kernels")] = default(B, "int8_kernels"),
    weights: Annotated[str, declared_option(B, "weights")] = default(B, "weights"),
    anchor: Annotated[bool, declared_option(B, "anchor")] = default(B, "anchor"),
) -> None:
    """Time the chosen model, its fp32 twin, the uniform 8-bit start and onnxruntime's quantize_static of the
    same float model on each engine and batch size."""
    from proqha.deploy.bench_run import bench_run

    done = bench_run(run, step=step, best_under_cost=best_under_cost, all_steps=all_steps,
                     engines=engine or ["ort"], batches=parse_int_tuple(batch, "--batch"), warmup=warmup,
                     iters=iters, seconds=seconds, threads=threads, samples=samples, anchor=anchor, device=device,
                     out_dir=out_dir, plot=plot, int8_kernels=int8_kernels, weights=weights,
                     on_note=lambda line: err_console.print(line, markup=False))
    report(done)
