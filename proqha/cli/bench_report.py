"""The bench's table and notes as the command line prints them: ``report`` of a ``bench_run`` result (what
``proqha bench`` and the pipeline's last stage print)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from proqha.cli.common import console, err_console
from proqha.cli.export_report import cpu_line

if TYPE_CHECKING:  # annotations only: the modules load when a bench has run
    from proqha.deploy.bench import BenchResult
    from proqha.deploy.bench_run import RunBench


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


def report(done: RunBench) -> None:
    """Print the table, its notes and, for onnxruntime, the CPU's int8 path; then the files written."""
    from proqha.deploy.bench import FP32_NOTE
    from proqha.deploy.ort_anchor import ANCHOR_NOTE

    print_bench(done.result, f"proqha bench: {done.run_dir}", done.samples)
    console.print(FP32_NOTE, markup=False)
    if any(r.get("anchor") for r in done.rows):
        console.print(ANCHOR_NOTE, markup=False)
    console.print("file KB: the bytes of the graph file as proqha export writes it", markup=False)
    if "ort" in done.result.settings["engines"]:
        console.print(f"{cpu_line()} (graphs: {done.int8_kernels}, weights {done.weights})", markup=False)
        console.print("ort MB: onnxruntime's peak resident memory for creating the session, in a child process",
                      markup=False)
    for path in done.written:
        err_console.print(f"wrote {path}")
