"""Post-training quantization as the command line shows it: a progress bar per phase, then float and
quantized top-1 side by side with the drop (``proqha quantize``)."""

from __future__ import annotations

from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from proqha.cli.common import console, err_console
from proqha.ptq_config import PTQConfig
from proqha.train_config import TrainConfig

PHASES = {"float": "evaluating the float model", "ranges": "calibrating: largest values",
          "histograms": "calibrating: histograms", "batchnorm": "re-estimating BatchNorm",
          "quantized": "evaluating the quantized model"}


def run_quantize(cfg: TrainConfig, ptq: PTQConfig, run_dir: Path) -> None:
    """Quantize ``cfg``'s init model into ``run_dir`` with progress, then the comparison table."""
    from proqha.ptq_run import quantize_run

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console, transient=True)
    task = progress.add_task("quantize", total=None)

    def on_batch(phase: str, done: int, total: int) -> None:
        progress.update(task, description=PHASES.get(phase, phase), completed=done, total=total)

    def on_start() -> None:  # model and data are built and checked: a bad option is one line with nothing before it
        progress.start()
        progress.console.print(f"quantizing {cfg.arch} on {cfg.dataset} at {cfg.bits} bit ({ptq.calib_method} "
                               f"calibration) into {run_dir}")

    try:
        result = quantize_run(cfg, ptq, run_dir, on_start=on_start, on_batch=on_batch)
    finally:
        if progress.live.is_started:
            progress.stop()
    f, q = result["float"], result["quantized"]
    table = Table(title=f"{cfg.arch} on {cfg.dataset}")
    top5 = result["num_classes"] > 5  # with 5 classes or fewer top-5 is always 100%
    for col in ("model", "test top-1", *(["test top-5"] if top5 else []), "test loss"):
        table.add_column(col, justify="right")
    for name, row in (("float", f), (f"int{cfg.bits}" if cfg.bits != 32 else "bits 32", q)):
        table.add_row(name, f"{row['test_top1']:.2f}", *([f"{row['test_top5']:.2f}"] if top5 else []),
                      f"{row['test_loss']:.4f}")
    console.print(table)
    change = f"drop {result['drop']:.2f}" if result["drop"] >= 0 else f"gain {-result['drop']:.2f}"
    bn = f", BatchNorm re-estimated in {result['bn_layers']} layers" if result["bn_layers"] else ""
    console.print(f"top-1 {change} points ({result['calib_images']} calibration images{bn}); run {run_dir} (export it, search it, or fine-tune it: proqha train "
                  f"--init {run_dir} --optimizer adam --lr 1e-4)")
    for line in result["warnings"]:
        console.print(f"warning: {line}", markup=False)
