"""`proqha train`: quantization-aware (or float) training into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from proqha.cli.common import console, err_console, fresh_run_dir, handle_errors, interrupted, resume_config
from proqha.train_config import TrainConfig


@handle_errors
def train(
    ctx: typer.Context,
    arch: Annotated[Optional[str], typer.Option(help="Architecture: a registered name, or package.module:factory for your own (default: the dataset's own).")] = None,
    dataset: Annotated[str, typer.Option(help="digits (offline default), mnist, cifar10, cifar100, imagefolder, or package.module:factory for your own.")] = "digits",
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder with the dataset's files.")] = None,
    download: Annotated[bool, typer.Option(help="Download the dataset into --data-dir if missing.")] = False,
    bits: Annotated[int, typer.Option(help="Weight and activation bits of searchable layers: 2..8, or 32 for float.")] = 8,
    bits_file: Annotated[Optional[Path], typer.Option(help="Per-layer bits (JSON BitConfig); overrides --bits.")] = None,
    weight_quantizer: Annotated[str, typer.Option(help="lsq (deploy-exact) or dorefa (the paper's).")] = "lsq",
    edge_layers: Annotated[str, typer.Option(help="First conv and last linear: int8, float, or search.")] = "int8",
    int8_kernels: Annotated[str, typer.Option(help="The CPUs the int8 file must be exact on: portable (every CPU: 8-bit weights on 8-bit inputs train on ±64 levels, onnxruntime's reduce_range) or vnni (±127, exact only where int8 sums are int32: VNNI/AMX, ARM64, TensorRT).")] = TrainConfig.int8_kernels,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (default 15; with --resume, extends the run).")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: sgd 0.1, adam 1e-3).")] = None,
    optimizer: Annotated[str, typer.Option(help="sgd or adam.")] = "sgd",
    weight_decay: Annotated[float, typer.Option(help="Weight decay (not on biases, BN, quantizer ranges).")] = 5e-4,
    seed: Annotated[int, typer.Option(help="Seed: same seed, same result on the same machine and thread count.")] = 0,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    init: Annotated[Optional[Path], typer.Option("--init", help="Start from this checkpoint (float or quantized).")] = None,
    amp: Annotated[str, typer.Option(help="Mixed precision for the float parts: none, bf16, fp16 (CUDA); quantizer math stays float32.")] = "none",
    channels_last: Annotated[bool, typer.Option(help="Train in channels_last memory format.")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model for training and evaluation (eager, with one warning, if it cannot).")] = TrainConfig.compile,
    run_dir: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/train-<n>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --run-dir (default: the latest) from its last epoch.")] = False,
) -> None:
    """Train a model quantization-aware (or float with --bits 32) and save checkpoints each epoch.

    Under torchrun (`torchrun --nproc_per_node=N -m proqha train ...`) it trains with
    DistributedDataParallel; --batch-size stays the global batch and only rank 0 writes or prints."""
    from proqha import distributed

    distributed.setup()
    if resume:
        cfg, run_dir = resume_config("train", TrainConfig, run_dir, ctx, epochs=epochs)
    else:
        cfg = TrainConfig(arch=arch, dataset=dataset, data_dir=str(data_dir) if data_dir else None,
                          download=download, bits=bits, bits_file=str(bits_file) if bits_file else None,
                          weight_quantizer=weight_quantizer, edge_layers=edge_layers, int8_kernels=int8_kernels,
                          epochs=epochs if epochs is not None else TrainConfig.epochs, batch_size=batch_size,
                          lr=lr, optimizer=optimizer, weight_decay=weight_decay, seed=seed, workers=workers,
                          device=device, init=str(init) if init else None, amp=amp,
                          channels_last=channels_last, compile=compile).resolved()
        run_dir = distributed.decide_on_main(lambda: fresh_run_dir("train", run_dir))
    run_train(cfg, run_dir, resume)


def run_train(cfg: TrainConfig, run_dir: Path, resume: bool = False) -> None:
    """Train ``cfg`` into ``run_dir`` with a progress bar, a line per epoch and the summary table."""
    from proqha import distributed
    from proqha.train import fit

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

    try:
        try:
            result = fit(cfg, run_dir, resume=resume, on_batch=on_batch, on_epoch=on_epoch, on_start=on_start)
        finally:
            if progress.live.is_started:  # stopping a progress never started still prints a blank line
                progress.stop()
    except KeyboardInterrupt:
        raise interrupted("train", run_dir, run_dir / "checkpoints" / "last.pt", "the last completed epoch is saved") from None
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
