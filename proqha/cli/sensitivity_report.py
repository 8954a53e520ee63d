"""The sensitivity measurement as the command line shows it: a progress bar while measuring, the worst knobs
as a table (most top-1 lost first), the files written (``proqha sensitivity``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from proqha.cli.common import console, err_console

if TYPE_CHECKING:  # annotations only: the modules load inside the command
    from proqha.search.sensitivity import Sensitivity, SensitivityConfig


def _num(value: float, fmt: str) -> str:
    return "inf" if math.isinf(value) else "-" if math.isnan(value) else format(value, fmt)


def sensitivity_table(result: Sensitivity, top: int, by: str = "top1_drop") -> Table:
    """The ``top`` rows that hurt most (by ``by``: top-1 drop or loss increase, ties by the other), below each
    knob's current bits."""
    step = f", step {result.step}" if result.step is not None else ""
    table = Table(title=f"sensitivity: {result.run_dir}{step} on {result.split} ({result.samples} images; "
                        f"unchanged: loss {result.base.loss:.4f}, top-1 {result.base.top1:.2f}%)")
    for col in ("layer", "knob", "bits", "now", "loss", "loss increase", "top-1 %", "top-1 drop"):
        table.add_column(col, justify="left" if col in ("layer", "knob") else "right")
    for r in result.worst(top, by):
        table.add_row(r.layer, "weights" if r.knob == "w" else "activations", str(r.bits),
                      str(result.current[r.layer][r.knob]), _num(r.loss, ".4f"), _num(r.loss_damage, "+.4f"),
                      _num(r.top1, ".2f"), _num(r.top1_drop, "+.2f"))
    return table


def sensitivity_and_report(cfg: SensitivityConfig) -> Sensitivity:
    """Measure ``cfg`` with a progress bar (stderr, transient), write its files, print the table."""
    from proqha.deploy.sensitivity_plots import write_sensitivity
    from proqha.search.sensitivity import measure_sensitivity

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console, transient=True)
    task = progress.add_task("measuring", total=None)

    def on_start(result: Sensitivity, jobs: int) -> None:  # the model and data are loaded: only now show
        progress.start()                                      # progress, so bad input is one line alone
        progress.update(task, total=jobs, description=f"measuring {result.arch} knobs on {result.split}")

    try:
        result = measure_sensitivity(cfg, on_job=lambda done, jobs: progress.update(task, completed=done),
                                     on_start=on_start)
    finally:
        if progress.live.is_started:  # stopping a progress never started still prints a blank line
            progress.stop()
    console.print(sensitivity_table(result, cfg.top, cfg.rank_by))
    for path in write_sensitivity(result, cfg.rank_by):
        err_console.print(f"wrote {path}")
    return result
