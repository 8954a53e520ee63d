"""`proqha search`: the progressive mixed-precision search from a trained checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from proqha.cli.common import console, err_console, fresh_run_dir, handle_errors, interrupted, resume_config
from proqha.cli.report import frontier_table, write_plots
from proqha.errors import ProqhaError
from proqha.runs import DEFAULT_ROOT, latest_run_dir
from proqha.search.config import SearchConfig

STOP_MESSAGES = {
    "steps": "ran all {steps} steps",
    "target": "target met at step {steps}",
    "floor": "stopped after step {steps}: no knob can be lowered by --interval without going below --min-bits",
}

_DEFAULT = SearchConfig()


@handle_errors
def search(
    ctx: typer.Context,
    source: Annotated[Optional[Path], typer.Option("--from", help="Train run, search run or checkpoint to start from (default: the latest train run).")] = None,
    lam: Annotated[float, typer.Option(help="Weight of cost saving against sensitivity (0: the reference's choice).")] = 0.1,
    candidates: Annotated[int, typer.Option(help="Candidates sampled per step.")] = 16,
    ratio: Annotated[float, typer.Option(help="Fraction of all knobs each candidate lowers, in (0, 1].")] = 0.5,
    interval: Annotated[int, typer.Option(help="Bits a chosen knob drops by: 1, 2 or 4.")] = 1,
    min_bits: Annotated[int, typer.Option(help="Floor for every knob (2..8).")] = 2,
    criterion: Annotated[str, typer.Option(help="hessian (the reference's score), loss (the calibration loss a candidate adds), acc (calibration error), or random (a control).")] = _DEFAULT.criterion,
    steps: Annotated[Optional[int], typer.Option(help="Progressive steps (default 8; with --resume, extends the run).")] = None,
    finetune_epochs: Annotated[int, typer.Option(help="Adam fine-tuning epochs after each step.")] = 2,
    lr: Annotated[float, typer.Option(help="Adam learning rate for scoring and fine-tuning.")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="Weight decay of the fine-tuning (the reference: 1e-4).")] = 0.0,
    batch_size: Annotated[int, typer.Option(help="Batch size (also the scoring batch).")] = 64,
    cost_metric: Annotated[Optional[str], typer.Option(help="What --lam trades against: paper (the paper cost) or bitops; follows the target.")] = None,
    target_cost: Annotated[Optional[float], typer.Option(help="Stop once the paper cost is at or below this.")] = None,
    target_bitops: Annotated[Optional[float], typer.Option(help="Stop once BitOPs are at or below this (<= 1: ratio to 32x32 bits).")] = None,
    target_size_mb: Annotated[Optional[float], typer.Option(help="Stop once the weights at their bits (the paper's model size, edge layers included) take at most this many MB; --lam then trades against the paper cost.")] = None,
    strategy: Annotated[str, typer.Option(help="table (every knob scored alone, the best lowered), sets (the reference's random sets), or allocate (a knapsack on a loss table; needs a target).")] = _DEFAULT.strategy,
    table_data: Annotated[str, typer.Option(help="Data of --strategy allocate's loss table: calib or train.")] = _DEFAULT.table_data,
    knobs: Annotated[str, typer.Option(help="What is searched: both, weights or activations.")] = _DEFAULT.knobs,
    fixed_bits: Annotated[Optional[int], typer.Option(help="Bits of the kind not searched (with --knobs weights|activations); default: as trained.")] = None,
    fit_budget: Annotated[bool, typer.Option(help="Near a target, lower only as many knobs as it needs (--no-fit-budget: every candidate lowers --ratio of the knobs, as the reference).")] = _DEFAULT.fit_budget,
    final_epochs: Annotated[int, typer.Option(help="Extra fine-tuning epochs of the last step (the one that meets the targets).")] = _DEFAULT.final_epochs,
    seed: Annotated[int, typer.Option(help="Seed: same seed, same search on the same machine and thread count.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model for fine-tuning and evaluation (recompiled each step).")] = _DEFAULT.compile,
    run_dir: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/search-<n>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the search in --run-dir (default: the latest) from its last step.")] = False,
) -> None:
    """Lower per-layer weight/activation bits step by step, fine-tuning after each; log the frontier.

    Under torchrun each rank scores its share of a step's candidates and the fine-tuning runs as DDP;
    the chosen bits are those of a single-process run with the same seed."""
    from proqha import distributed

    distributed.setup()
    if resume:
        cfg, run_dir = resume_config("search", SearchConfig, run_dir, ctx, steps=steps)
    else:
        if source is None:
            source = latest_run_dir("train", DEFAULT_ROOT)
            if source is None:
                raise ProqhaError(f"no train run under {DEFAULT_ROOT}/ to search from; run `proqha train` or pass --from")
        cfg = SearchConfig(source=str(source), candidates=candidates, ratio=ratio, interval=interval,
                           min_bits=min_bits, criterion=criterion, lam=lam,
                           steps=steps if steps is not None else _DEFAULT.steps,
                           finetune_epochs=finetune_epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, cost_metric=cost_metric,
                           target_cost=target_cost, target_bitops=target_bitops, target_size_mb=target_size_mb,
                           strategy=strategy, table_data=table_data, knobs=knobs, fixed_bits=fixed_bits,
                           fit_budget=fit_budget, final_epochs=final_epochs,
                           seed=seed, device=device, workers=workers, compile=compile).resolved()
        run_dir = distributed.decide_on_main(lambda: fresh_run_dir("search", run_dir))
    search_run(cfg, run_dir, resume)


def search_run(cfg: SearchConfig, run_dir: Path, resume: bool = False) -> None:
    """Search ``cfg`` into ``run_dir`` with progress bars, a line per step, the frontier table and plots."""
    from proqha import distributed
    from proqha.search import run_search
    from proqha.search.frontier import FRONTIER_FILE, read_frontier

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err_console, transient=True,
                        disable=not distributed.is_main())
    step_task = progress.add_task("steps", total=cfg.steps, info="")
    cand_task = progress.add_task("candidates", total=cfg.candidates, info="")

    def on_candidate(step: int, i: int, n: int) -> None:
        progress.update(cand_task, completed=i + 1, total=n, info=f"step {step}")

    def on_step(row: dict) -> None:
        progress.update(step_task, completed=row["step"],
                        info=f"cost {row['cost']:.4f}  top-1 {row['test_top1']:.2f}%")
        progress.console.print(f"step {row['step']:>3}  cost {row['cost']:.4f}  GBitOPs {row['bitops'] / 1e9:.4f}"
                               f"  score {'-' if math.isnan(row['score']) else format(row['score'], '.3g')}  test top-1 {row['test_top1']:.2f}%  {row['wall_s']:.1f}s")
        for line in row.get("warnings", ()):
            progress.console.print(f"warning: step {row['step']}: {line}", markup=False)

    def on_start(s) -> None:
        progress.console.print(f"searching {s.recipe.arch} ({len(s.knobs)} knobs) on {s.dataset}, "
                               f"criterion {cfg.criterion}, lam {cfg.lam}, into {run_dir}")

    try:
        with progress:
            result = run_search(cfg, run_dir, resume=resume, on_candidate=on_candidate, on_step=on_step,
                                on_start=on_start)
    except KeyboardInterrupt:
        raise interrupted("search", run_dir, run_dir / FRONTIER_FILE, "completed steps are saved") from None
    if not distributed.is_main():
        return
    rows = read_frontier(run_dir)
    console.print(frontier_table(rows, f"ProQHA frontier: {run_dir}"))
    for path in write_plots(run_dir, rows):
        err_console.print(f"wrote {path}")
    err_console.print(STOP_MESSAGES[result["stopped"]].format(steps=result["steps"]))
