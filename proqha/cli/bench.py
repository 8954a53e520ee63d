"""`proqha bench`: measured latency next to the paper's cost figures, per engine and batch size."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from proqha.cli.common import check_writable, console, err_console, handle_errors, parse_int_tuple
from proqha.cli.export import cpu_line
from proqha.deploy.runtime import ONNX_ENGINES, check_engines
from proqha.errors import ProqhaError
from proqha.runs import pick_checkpoint

if TYPE_CHECKING:  # annotations only: the modules load inside the commands that use them
    from proqha.checkpoint import Checkpoint
    from proqha.deploy.bench import BenchModel, BenchResult


def _bench_model(label: str, checkpoint: Path, step: int | None, want_trt: bool, int8_kernels: str = "portable",
                 weights: str = "packed") -> tuple[BenchModel, Checkpoint]:
    from proqha.builder import load_model
    from proqha.deploy.bench import bench_model
    from proqha.export.file_size import source_metadata

    model, state = load_model(checkpoint)
    size = state.input_size
    return bench_model(label, model, size, step, want_trt, int8_kernels, weights,
                       source_metadata(state, checkpoint, step)), state


def _megabytes(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}"


def _file_size(row: dict) -> str:
    """The graph file's size in KB, with its ratio to the fp32 graph's where there is one."""
    from proqha.cost import format_ratio

    if row["file_bytes"] is None:
        return "-"
    ratio = row["file_ratio_fp32"]
    return f"{row['file_bytes'] / 1e3:.1f}" + ("" if ratio is None else f" ({format_ratio(ratio)})")


def print_bench(result: BenchResult, title: str, samples: int) -> None:
    """The side-by-side table: latency and speed-up next to paper cost, BitOPs, the graph file's size (and
    its ratio to the fp32 graph's), onnxruntime's session memory and accuracy on the first ``samples`` test
    images (the search's frontier uses the whole test split)."""
    from proqha.cost import format_ratio

    table = Table(title=title)
    anchored = any(r.get("vs_anchor") is not None for r in result.rows)
    for col in ("model", "engine", "batch", "median ms", "p90 ms", "p99 ms", "img/s", "vs fp32",
                *(["vs qs"] if anchored else []), "paper cost",
                "GBitOPs (ratio)", "file KB (ratio)", "ort MB", f"top-1 torch ({samples} img)",
                f"top-1 engine ({samples} img)"):
        table.add_column(col, justify="left" if col in ("model", "engine") else "right")
    for r in result.rows:
        speed = "-" if r["speedup_vs_fp32"] is None else f"{r['speedup_vs_fp32']:.2f}x"
        anchor = ["-" if r.get("vs_anchor") is None else f"{r['vs_anchor']:.2f}x"] if anchored else []
        table.add_row(r["model"], r["engine"], str(r["batch"]), f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}",
                      f"{r['p99_ms']:.3f}", f"{r['throughput']:.0f}", speed, *anchor, format_ratio(r["paper_cost"]),
                      f"{r['gbitops']:.4f} ({format_ratio(r['bitops_ratio'])})",
                      _file_size(r), _megabytes(r["ort_session_bytes"]),
                      f"{r['torch_top1']:.2f}", f"{r['engine_top1']:.2f}")
    console.print(table)


@handle_errors
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
    from proqha.data import checkpoint_calibration_images, checkpoint_test_loader
    from proqha.deploy.bench import (
        ACCURACY_BATCH,
        ANCHOR_CALIBRATION,
        SANITY_BATCH,
        engine_max_batch,
        fp32_model,
        make_runtime,
        run_bench,
        try_anchor,
    )
    from proqha.export.file_size import source_metadata
    from proqha.export.onnx_export import check_int8_kernels, check_weights
    from proqha.search.frontier import step_checkpoints
    from proqha.train import resolve_device

    engines = check_engines(engine or ["ort"])
    batches = list(parse_int_tuple(batch, "--batch"))
    for option, value, ok in (("--warmup", warmup, warmup >= 0), ("--iters", iters, iters >= 1),
                              ("--seconds", seconds, seconds is None or seconds > 0),
                              ("--threads", threads, threads is None or threads >= 1),
                              ("--samples", samples, samples >= 1)):
        if not ok:
            raise ProqhaError(f"{option} out of range: {value}")
    check_int8_kernels(int8_kernels)
    check_weights(weights)
    torch_device = resolve_device(device) if "torch" in engines else None
    checkpoint, run_dir, chosen_step = pick_checkpoint(run, step, best_under_cost)
    if all_steps and chosen_step is None:
        raise ProqhaError(f"--all-steps times every step of a search run; {run or run_dir} is not one")
    out_dir = out_dir or run_dir / "bench"
    check_writable(out_dir, "--out-dir", folder=True)
    want_trt = "trt" in engines
    chosen, state = _bench_model(f"step {chosen_step}" if chosen_step is not None else "model", checkpoint,
                                 chosen_step, want_trt, int8_kernels, weights)
    size = state.input_size
    models = [chosen, fp32_model(chosen, size, source_metadata(state, checkpoint, chosen_step))]
    anchored = anchor and any(e in ONNX_ENGINES for e in engines)
    if anchored:
        err_console.print("quantizing the fp32 twin with onnxruntime's quantize_static (the anchor row)")
        models += try_anchor(chosen, models[1], checkpoint_calibration_images(state, ANCHOR_CALIBRATION).numpy(),
                             lambda line: err_console.print(line, markup=False))
    if chosen_step is not None:
        others = step_checkpoints(run_dir) if all_steps else [(s, p) for s, p in step_checkpoints(run_dir)[:1]]
        for s, path in others:
            if s != chosen_step:
                label = "step 0 (uniform 8)" if s == 0 else f"step {s}"
                models.append(_bench_model(label, path, s, want_trt, int8_kernels, weights)[0])

    def runtime(name: str, bm: BenchModel):
        return make_runtime(name, bm, threads, torch_device, size, engine_max_batch(batches))

    sanity_x = next(iter(checkpoint_test_loader(state, SANITY_BATCH, SANITY_BATCH)))[0].numpy()
    result = run_bench(models, engines, batches, runtime, sanity_x,
                       lambda: checkpoint_test_loader(state, samples, ACCURACY_BATCH),
                       size, warmup, None if seconds else iters, seconds,
                       on_progress=lambda what: err_console.print(f"timing {what}"))
    report(result, out_dir, run_dir, plot, samples,
           f"(graphs: {int8_kernels}, weights {weights})" if "ort" in engines else None)


def report(result: BenchResult, out: Path, run_dir: Path, plot: bool, samples: int, ort_forms: str | None) -> None:
    """Write bench.json/bench.csv (and plots), print the table and, for onnxruntime, the CPU's int8 path."""
    from proqha.deploy.bench import FP32_NOTE, plot_results, write_results
    from proqha.deploy.ort_anchor import ANCHOR_NOTE

    paths = write_results(result, out)
    if plot:
        paths += plot_results(result, out, str(run_dir))
    print_bench(result, f"proqha bench: {run_dir}", samples)
    console.print(FP32_NOTE, markup=False)
    if any(r.get("anchor") for r in result.rows):
        console.print(ANCHOR_NOTE, markup=False)
    console.print("file KB: the bytes of the graph file as proqha export writes it", markup=False)
    if ort_forms is not None:
        console.print(f"{cpu_line()} {ort_forms}", markup=False)
        console.print("ort MB: onnxruntime's peak resident memory for creating the session, in a child process",
                      markup=False)
    for path in paths:
        err_console.print(f"wrote {path}")
