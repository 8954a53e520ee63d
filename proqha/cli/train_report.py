"""Training as the command line shows it: a progress bar, a line per epoch, the summary table
(``proqha train`` and the pipeline's first stage)."""

from __future__ import annotations

from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from proqha.cli.common import console, err_console, interrupted
from proqha.runs import RunDir
from proqha.train_config import TrainConfig


def run_train(cfg: TrainConfig, run_dir: Path, resume: bool = False) -> None:
    """Train ``cfg`` into ``run_dir`` with a progress bar, a line per epoch and the summary table."""
    from proqha import distributed
    from proqha.train import train_run

    progress = Progress(TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
                        console=err_console, transient=True, disable=not distributed.is_main())
    task = progress.add_task("train", total=None, epoch=0, epochs=cfg.epochs, loss=float("nan"))

    def on_batch(epoch: int, i: int, n: int, loss: float) -> None:
        progress.update(task, completed=i + 1, total=n, epoch=epoch, loss=loss)

    def on_epoch(row: dict) -> None:
        progress.console.print(f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  train {row['train_top1']:.2f}%"
                               f"  test top-1 {row['test_top1']:.2f}%  top-5 {row['test_top5']:.2f}%"
                               f"  {row['time_s']:.1f}s")
        for line in row.get("warnings", ()):
            progress.console.print(f"warning: {line}", markup=False)

    def on_start() -> None:  # the model and data are built and checked: only now show progress, so a bad
        progress.start()      # --arch/--dataset is one error line with nothing before it
        progress.console.print(f"training {cfg.arch} on {cfg.dataset} at {cfg.bits} bit into {run_dir}")

    def on_note(note: str) -> None:  # what loading --init said (a re-initialised head)
        progress.console.print(note, markup=False)

    try:
        try:
            result = train_run(cfg, run_dir, resume=resume, on_batch=on_batch, on_epoch=on_epoch, on_start=on_start,
                               on_note=on_note)
        finally:
            if progress.live.is_started:  # stopping a progress never started still prints a blank line
                progress.stop()
    except KeyboardInterrupt:
        raise interrupted("train", run_dir, RunDir(run_dir).last, "the last completed epoch is saved") from None
    if not distributed.is_main():
        return
    last = result["last"]
    table = Table(title=f"proqha train: {cfg.arch} on {cfg.dataset}")
    for col in ("run", "epochs", "test top-1", "test top-5", "best top-1"):
        table.add_column(col)
    if last:
        table.add_row(str(run_dir), str(cfg.epochs), f"{last['test_top1']:.2f}", f"{last['test_top5']:.2f}",
                      f"{result['best_top1']:.2f}")
    else:
        table.add_row(str(run_dir), str(cfg.epochs), "-", "-", f"{result['best_top1']:.2f}")
    console.print(table)
