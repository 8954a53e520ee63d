"""`proqha bench`: measured latency next to the paper's cost figures, per engine and batch size
(``proqha.deploy.bench_run``), printed as one table (``proqha.cli.bench_report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from proqha.cli.bench_report import report
from proqha.cli.common import err_console, handle_errors, parse_int_tuple


@handle_errors(flags={"engines": "--engine", "batches": "--batch"})
def bench(
    run: Annotated[Optional[Path], typer.Argument(help="Search run, train run or checkpoint (default: the latest search, else train, run).")] = None,
    engine: Annotated[Optional[list[str]], typer.Option(help="ort, openvino, trt or torch; repeat for several (default ort).")] = None,
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,8,32",
    warmup: Annotated[int, typer.Option(help="Untimed runs before timing.")] = 5,
    iters: Annotated[int, typer.Option(help="Timed runs per batch size.")] = 50,
    seconds: Annotated[Optional[float], typer.Option(help="Time budget per batch size instead of --iters.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="onnxruntime intra-op threads (default: its own).")] = None,
    samples: Annotated[int, typer.Option(help="Test images for each accuracy figure.")] = 256,
    step: Annotated[Optional[int], typer.Option(help="Search step (default: the last).")] = None,
    best_under_cost: Annotated[Optional[float], typer.Option(help="The most accurate step at or below this paper cost.")] = None,
    all_steps: Annotated[bool, typer.Option(help="Export and time every step of the search run.")] = False,
    plot: Annotated[bool, typer.Option(help="Write latency_vs_bitops.png and accuracy_vs_latency.png.")] = False,
    device: Annotated[str, typer.Option(help="Device of the torch engine: auto, cpu, cuda, cuda:N.")] = "auto",
    out_dir: Annotated[Optional[Path], typer.Option(help="Where bench.json/bench.csv go (default RUN/bench).")] = None,
    int8_kernels: Annotated[str, typer.Option(help="The onnxruntime graph form: portable (exact on every CPU) or vnni (exact only with VNNI/AMX or on ARM64).")] = "portable",
    weights: Annotated[str, typer.Option(help="Weight storage of the onnxruntime graphs: packed (INT2/INT4 where the grid fits) or int8.")] = "packed",
    anchor: Annotated[bool, typer.Option(help="Time onnxruntime's quantize_static of the fp32 twin beside them (ort and openvino engines).")] = True,
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
