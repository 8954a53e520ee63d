"""The search as the command line shows it: progress bars for steps and candidates, a line per step, the
frontier table and plots, why it stopped (``proqha search`` and the pipeline's second stage)."""

from __future__ import annotations

import math
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from proqha.cli.common import console, err_console, interrupted
from proqha.cli.report import frontier_table
from proqha.search.config import SearchConfig

STOP_MESSAGES = {
    "steps": "ran all {steps} steps",
    "target": "target met at step {steps}",
    "floor": "stopped after step {steps}: no knob can be lowered (by --interval, or to any level with --strategy "
             "allocate) within --min-bits in a way that brings an unmet target (without one, the cost metric) closer "
             "(the file counts 8-, 4- and 2-bit stored weights only; activations save no bytes)",
}


def search_run(cfg: SearchConfig, run_dir: Path, resume: bool = False) -> None:
    """Search ``cfg`` into ``run_dir`` with progress bars, a line per step, the frontier table and plots."""
    from proqha import distributed
    from proqha.deploy.search_plots import write_search_plots
    from proqha.search import run_search
    from proqha.search.frontier import FRONTIER_FILE, read_frontier
    from proqha.search.targets import missed_targets

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err_console, transient=True,
                        disable=not distributed.is_main())
    step_task = progress.add_task("steps", total=cfg.steps, info="")
    cand_task = progress.add_task("candidates", total=cfg.candidates, info="")

    table_task = progress.add_task("latency table", total=1, info="", visible=False)

    def latency_progress(done: int, jobs: int) -> None:  # graphs timed for the latency table, before step 0
        if not progress.live.is_started:
            progress.start()
        progress.update(table_task, completed=done, total=jobs, visible=done < jobs, info=cfg.latency_engine)

    def on_candidate(step: int, i: int, n: int) -> None:
        progress.update(cand_task, completed=i + 1, total=n, info=f"step {step}")

    def on_step(row: dict) -> None:
        progress.update(step_task, completed=row["step"],
                        info=f"cost {row['cost']:.4f}  top-1 {row['test_top1']:.2f}%")
        file_kb = "" if math.isnan(row["file_bytes"]) else f"  file {row['file_bytes'] / 1e3:.1f} KB"
        if not math.isnan(row["latency_ms"]):
            file_kb += (f"  latency {row['latency_ms']:.3f} ms, {row['latency_ratio']:.2f}x int8 "
                        f"(predicted {row['latency_ms_pred']:.3f})")
        progress.console.print(f"step {row['step']:>3}  cost {row['cost']:.4f}  GBitOPs {row['bitops'] / 1e9:.4f}{file_kb}"
                               f"  score {'-' if math.isnan(row['score']) else format(row['score'], '.3g')}  test top-1 {row['test_top1']:.2f}%  {row['wall_s']:.1f}s")
        if row.get("race"):
            progress.console.print(race_line(row), markup=False)
        for line in row.get("warnings", ()):
            progress.console.print(f"warning: step {row['step']}: {line}", markup=False)

    def on_start(s) -> None:  # the model and data are loaded and checked: only now show progress, so a bad
        if not progress.live.is_started:  # start run is one error line with nothing before it
            progress.start()
        progress.console.print(f"searching {s.recipe.arch} ({len(s.knobs)} knobs) on {s.dataset}, "
                               f"criterion {cfg.criterion}, lam {cfg.lam}, into {run_dir}")

    measure_file = None
    if cfg.needs_file:  # the search predicts the file from one written here (the exporter is imported only then)
        from proqha.export.file_size import measure_file_model as measure_file
    measure_latency = None
    if cfg.needs_latency:  # the per-layer table is timed before the search starts (the exporter imported only then)
        from proqha.deploy.latency_table import search_latency

        measure_latency = search_latency(cfg, run_dir, on_progress=latency_progress)
    try:
        try:
            result = run_search(cfg, run_dir, resume=resume, on_candidate=on_candidate, on_step=on_step,
                                on_start=on_start, measure_file=measure_file, measure_latency=measure_latency)
        finally:
            if progress.live.is_started:  # stopping a progress never started still prints a blank line
                progress.stop()
    except KeyboardInterrupt:
        raise interrupted("search", run_dir, run_dir / FRONTIER_FILE, "completed steps are saved") from None
    if not distributed.is_main():
        return
    rows = read_frontier(run_dir)
    console.print(frontier_table(rows, f"ProQHA frontier: {run_dir}"))
    for path in write_search_plots(run_dir, rows):
        err_console.print(f"wrote {path}")
    missed = missed_targets(cfg, rows[-1]) if rows else []
    if result["stopped"] == "target" and missed:  # met by the table's prediction, not by the measured graph
        err_console.print(f"stopped at step {result['steps']}: the latency table's prediction meets the targets")
    else:
        err_console.print(STOP_MESSAGES[result["stopped"]].format(steps=result["steps"]))
    if missed:
        err_console.print(f"warning: target not met at step {rows[-1]['step']}: " + "; ".join(missed), markup=False)


def race_line(row: dict) -> str:
    """The final race of a step, one line: each round's calibration score per entrant (what the race ranks
    by: the metric, else the loss, with top-1 beside it), then the winner."""
    by_metric = "calib_metric" in row["race"][0][0]

    def score(e: dict) -> str:
        return f"{e['calib_metric']:.2f}" if by_metric else f"loss {e['calib_loss']:.4f} ({e['calib_top1']:.2f}%)"

    rounds = "; ".join(f"after {r[0]['epochs']} epochs " + ", ".join(f"{e['label']} {score(e)}" for e in r)
                       for r in row["race"])
    margin = (f"metric {row['selected_margin']:.2f} points above" if by_metric
              else f"loss {row['selected_margin']:.4f} below") + " the runner-up's"
    return f"step {row['step']:>3}  final race on the calibration split: {rounds} -> {row['selected']} ({margin})"
