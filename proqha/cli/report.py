"""`proqha report RUN`: a search run's frontier as a table, frontier.png and bits.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.table import Table

from proqha.cli.common import console, err_console, handle_errors
from proqha.errors import ProqhaError
from proqha.runs import DEFAULT_ROOT, latest_run_dir

if TYPE_CHECKING:  # annotations only: the modules load inside the commands that use them
    from proqha.deploy.report import UniformPoint


def frontier_table(rows: list[dict[str, Any]], title: str, fp32_bytes: int | None = None) -> Table:
    """The frontier as a rich table: one row per step (with the exported file's size where measured)."""
    from proqha.cost import format_ratio
    from proqha.deploy.report import is_nan

    table = Table(title=title)
    files = fp32_bytes is not None
    for col in ("step", "paper cost", "GBitOPs", "BitOPs ratio", "weights KB (cost model)") + \
            (("file KB (ratio)",) if files else ()) + ("score", "train top-1", "test top-1", "seconds"):
        table.add_column(col, justify="right")

    def num(value: float, fmt: str) -> str:
        return "-" if is_nan(value) else format(value, fmt)

    for r in rows:
        file_cell = (f"{r['file_bytes'] / 1e3:.1f} ({format_ratio(r['file_bytes'] / fp32_bytes)})",) if files else ()
        table.add_row(str(r["step"]), format_ratio(r["cost"]), f"{r['bitops'] / 1e9:.4f}",
                      format_ratio(r["bitops_ratio"]), f"{r['size_bytes'] / 1e3:.1f}", *file_cell,
                      num(r["score"], ".3g"), num(r["train_top1"], ".2f"), num(r["test_top1"], ".2f"),
                      num(r["wall_s"], ".1f"))
    return table


def baseline_table(rows: list[dict[str, Any]], baselines: list[UniformPoint]) -> Table:
    """Per uniform-bit run beside the search: its figures and the search steps that dominate it."""
    from proqha.cost import format_ratio
    from proqha.deploy.report import dominating_steps

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


def write_plots(run_dir: Path, rows: list[dict[str, Any]], step: int | None = None,
                files: tuple[int, list[tuple[UniformPoint, int]]] | None = None) -> list[Path]:
    """frontier.png (with uniform-bit train runs found beside the search), bits.png of one step and, with
    ``files`` (from ``proqha.deploy.report.measure_file_sizes``), frontier_file_size.png."""
    from proqha.deploy.report import pick_row, plot_bits, plot_file_size, plot_frontier, search_baselines

    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    arch = config.get("recipe", {}).get("arch", "")
    baselines = search_baselines(run_dir)
    row = pick_row(rows, step)
    paths = [plot_frontier(rows, baselines, run_dir / "frontier.png", f"{arch} ProQHA frontier ({run_dir.name})"),
             plot_bits(row, run_dir / "bits.png")]
    if files is not None:
        paths.append(plot_file_size(rows, files[1], files[0], run_dir / "frontier_file_size.png",
                                    f"{arch}: accuracy against the exported file's size ({run_dir.name})"))
    return paths


@handle_errors
def report(
    run: Annotated[Optional[Path], typer.Argument(help="Search run directory (default: the latest).")] = None,
    step: Annotated[Optional[int], typer.Option(help="Step whose per-layer bits go to bits.png (default: last).")] = None,
    file_size: Annotated[bool, typer.Option(help="Export every step (packed weights, not validated) to show its ONNX file size, and plot accuracy against it (frontier_file_size.png).")] = False,
) -> None:
    """Print a search run's frontier and write frontier.png and bits.png into it."""
    from proqha.deploy.report import measure_file_sizes, pick_row, search_baselines
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
    for path in write_plots(run_dir, rows, step, files):
        err_console.print(f"wrote {path}")
