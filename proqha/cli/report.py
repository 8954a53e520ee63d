"""`proqha report RUN`: a search run's frontier as a table, frontier.png and bits.png (drawn by
``proqha.deploy.search_plots``); the frontier and baseline tables that ``proqha search`` prints too."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.table import Table

from proqha.cli.common import console, err_console, handle_errors
from proqha.errors import ProqhaError
from proqha.runs import DEFAULT_ROOT, latest_run_dir

if TYPE_CHECKING:  # annotations only: the modules load inside the commands that use them
    from proqha.deploy.search_plots import UniformPoint


def frontier_table(rows: list[dict[str, Any]], title: str, fp32_bytes: int | None = None) -> Table:
    """The frontier as a rich table: one row per step (with the exported file's size where measured)."""
    from proqha.cost import format_ratio
    from proqha.deploy.search_plots import is_nan

    table = Table(title=title)
    files = fp32_bytes is not None
    timed = any(not is_nan(r.get("latency_ms", math.nan)) for r in rows)
    for col in ("step", "paper cost", "GBitOPs", "BitOPs ratio", "weights KB (cost model)") + \
            (("file KB (ratio)",) if files else ()) + (("latency ms (predicted)",) if timed else ()) + ("score", "train top-1", "test top-1", "epochs", "selected", "seconds"):
        table.add_column(col, justify="right")

    def num(value: float, fmt: str) -> str:
        return "-" if is_nan(value) else format(value, fmt)

    for r in rows:
        file_cell = (f"{r['file_bytes'] / 1e3:.1f} ({format_ratio(r['file_bytes'] / fp32_bytes)})",) if files else ()
        if timed:
            file_cell += (f"{num(r.get('latency_ms', math.nan), '.3f')} ({num(r.get('latency_ms_pred', math.nan), '.3f')})",)
        table.add_row(str(r["step"]), format_ratio(r["cost"]), f"{r['bitops'] / 1e9:.4f}",
                      format_ratio(r["bitops_ratio"]), f"{r['size_bytes'] / 1e3:.1f}", *file_cell,
                      num(r["score"], ".3g"), num(r["train_top1"], ".2f"), num(r["test_top1"], ".2f"),
                      num(r.get("epochs", math.nan), ".0f"), r.get("selected") or "-", num(r["wall_s"], ".1f"))
    return table


def baseline_table(rows: list[dict[str, Any]], baselines: list[UniformPoint]) -> Table:
    """Per uniform-bit run beside the search: its figures and the search steps that dominate it."""
    from proqha.cost import format_ratio
    from proqha.deploy.search_plots import dominating_steps

    table = Table(title="baselines: the run the search started from and uniform-bit train runs of its recipe "
                        "(same arch, data, epochs, optimizer, lr, weight decay); dominated by a search step? "
                        "(no more cost, BitOPs; no less top-1)")
    for col in ("run", "bits", "paper cost", "GBitOPs", "test top-1", "dominated by"):
        table.add_column(col, justify="right")
    for point in baselines:
        steps = dominating_steps(rows, point)
        table.add_row(point.run + (" (start)" if point.start else ""), str(point.bits), format_ratio(point.cost),
                      f"{point.bitops / 1e9:.4f}",
                      f"{point.test_top1:.2f}", ", ".join(f"step {s}" for s in steps) if steps else "no step")
    return table


@handle_errors
def report(
    run: Annotated[Optional[Path], typer.Argument(help="Search run directory (default: the latest).")] = None,
    step: Annotated[Optional[int], typer.Option(help="Step whose per-layer bits go to bits.png (default: last).")] = None,
    file_size: Annotated[bool, typer.Option(help="Export every step (packed weights, not validated) to show its ONNX file size, and plot accuracy against it (frontier_file_size.png).")] = False,
) -> None:
    """Print a search run's frontier and write frontier.png and bits.png into it."""
    from proqha.deploy.search_plots import measure_file_sizes, pick_row, search_baselines, write_search_plots
    from proqha.search.frontier import read_frontier

    run_dir = run or latest_run_dir("search", DEFAULT_ROOT)
    if run_dir is None:
        raise ProqhaError(f"no search run found under {DEFAULT_ROOT}/ (pass RUN)")
    if not run_dir.is_dir():
        raise ProqhaError(f"run directory not found: {run_dir}")
    rows = read_frontier(run_dir)
    pick_row(rows, step)  # a bad --step fails before any work
    baselines = search_baselines(run_dir)
    files = measure_file_sizes(run_dir, rows, baselines) if file_size else None
    console.print(frontier_table(rows, f"ProQHA frontier: {run_dir}", files[0] if files else None))
    if baselines:
        console.print(baseline_table(rows, baselines))
    for path in write_search_plots(run_dir, rows, step, files):
        err_console.print(f"wrote {path}")
