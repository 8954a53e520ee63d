"""`proqha pipeline`: train -> search -> export -> bench in one command, with defaults that finish offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from proqha.cli.bench import bench
from proqha.cli.common import err_console, handle_errors, parse_int_tuple
from proqha.cli.export import export
from proqha.cli.search import search
from proqha.cli.train import train
from proqha.deploy.runtime import ENGINES
from proqha.errors import ProqhaError
from proqha.runs import DEFAULT_ROOT, next_run_dir
from proqha.search import SearchConfig
from proqha.train import TrainConfig


@handle_errors
def pipeline(
    arch: Annotated[Optional[str], typer.Option(help="Architecture: a registered name, or package.module:factory for your own (default: the dataset's own).")] = None,
    dataset: Annotated[str, typer.Option(help="Dataset (default digits, offline), or package.module:factory for your own.")] = "digits",
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder with the dataset's files.")] = None,
    epochs: Annotated[int, typer.Option(help="QAT epochs at 8 bit.")] = 15,
    lam: Annotated[float, typer.Option(help="Search: weight of cost saving against sensitivity.")] = 0.1,
    steps: Annotated[int, typer.Option(help="Search steps.")] = 8,
    target_cost: Annotated[Optional[float], typer.Option(help="Search: stop at this paper cost.")] = None,
    criterion: Annotated[str, typer.Option(help="Search score: hessian, acc or random.")] = "hessian",
    engine: Annotated[Optional[list[str]], typer.Option(help="Bench engines: ort, trt, torch (repeatable).")] = None,
    batch: Annotated[str, typer.Option(help="Bench batch sizes.")] = "1,8,32",
    iters: Annotated[int, typer.Option(help="Bench timed runs per batch size.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed for training and search.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Train, search, export (validated) and benchmark; ends with the latency/cost/accuracy table."""
    # every stage's options are checked before the first stage starts
    TrainConfig(arch=arch, dataset=dataset, data_dir=str(data_dir) if data_dir else None, epochs=epochs,
                seed=seed, device=device).resolved()
    SearchConfig(source="(the train run)", lam=lam, steps=steps, target_cost=target_cost, criterion=criterion,
                 seed=seed, device=device).resolved()
    for e in engine or ["ort"]:
        if e not in ENGINES:
            raise ProqhaError(f"--engine must be one of {', '.join(ENGINES)}, got {e!r}")
    parse_int_tuple(batch, "--batch")
    if iters < 1:
        raise ProqhaError(f"--iters out of range: {iters}")
    train_dir, search_dir = next_run_dir("train", DEFAULT_ROOT), next_run_dir("search", DEFAULT_ROOT)
    err_console.print(f"[1/4] train -> {train_dir}")
    train(arch=arch, dataset=dataset, data_dir=data_dir, download=False, bits=8, bits_file=None,
          weight_quantizer="lsq", edge_layers="int8", epochs=epochs, batch_size=64, lr=None, optimizer="sgd",
          weight_decay=5e-4, seed=seed, workers=0, device=device, init=None, amp="none", channels_last=False,
          run_dir=train_dir, resume=False)
    err_console.print(f"[2/4] search -> {search_dir}")
    search(source=train_dir, lam=lam, candidates=16, ratio=0.5, interval=1, min_bits=2, criterion=criterion,
           steps=steps, finetune_epochs=2, lr=1e-3, weight_decay=0.0, batch_size=64, cost_metric=None,
           target_cost=target_cost,
           target_bitops=None, target_size_mb=None, seed=seed, device=device, workers=0, run_dir=search_dir,
           resume=False)
    err_console.print("[3/4] export")
    export(run=search_dir, step=None, best_under_cost=None, fmt="onnx", profile="ort", out=None, check=True,
           samples=256, force=False, device=device)
    err_console.print("[4/4] bench")
    bench(run=search_dir, engine=engine or ["ort"], batch=batch, warmup=5, iters=iters, seconds=None, threads=None,
          samples=256, step=None, best_under_cost=None, all_steps=False, plot=True, device=device, out_dir=None)
