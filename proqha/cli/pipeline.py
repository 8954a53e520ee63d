"""`proqha pipeline`: train -> search -> export -> bench in one command, with defaults that finish offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from proqha.cli.bench import bench
from proqha.cli.common import err_console, handle_errors, parse_int_tuple
from proqha.cli.export import export
from proqha.cli.search import search_run
from proqha.cli.train import run_train
from proqha.deploy.runtime import check_engines
from proqha.errors import ProqhaError
from proqha.runs import DEFAULT_ROOT, next_run_dir
from proqha.search.config import SearchConfig
from proqha.train_config import TrainConfig

_TRAIN, _SEARCH = TrainConfig(), SearchConfig()  # the defaults of the stages, defined there once


@handle_errors
def pipeline(
    arch: Annotated[Optional[str], typer.Option(help="Architecture: a registered name, or package.module:factory for your own (default: the dataset's own).")] = None,
    dataset: Annotated[str, typer.Option(help="Dataset (default digits, offline), or package.module:factory for your own.")] = _TRAIN.dataset,
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder with the dataset's files.")] = None,
    epochs: Annotated[int, typer.Option(help="QAT epochs at 8 bit.")] = _TRAIN.epochs,
    lam: Annotated[float, typer.Option(help="Search: weight of cost saving against sensitivity.")] = _SEARCH.lam,
    steps: Annotated[int, typer.Option(help="Search steps.")] = _SEARCH.steps,
    target_cost: Annotated[Optional[float], typer.Option(help="Search: stop at this paper cost.")] = None,
    criterion: Annotated[str, typer.Option(help="Search score: hessian, loss, acc or random.")] = _SEARCH.criterion,
    engine: Annotated[Optional[list[str]], typer.Option(help="Bench engines: ort, openvino, trt, torch (repeatable).")] = None,
    batch: Annotated[str, typer.Option(help="Bench batch sizes.")] = "1,8,32",
    iters: Annotated[int, typer.Option(help="Bench timed runs per batch size.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed for training and search.")] = _TRAIN.seed,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = _TRAIN.device,
) -> None:
    """Train, search, export (validated) and benchmark; ends with the latency/cost/accuracy table."""
    # every stage's options are checked before the first stage starts; what is not an option here is the
    # stage's own default (TrainConfig, SearchConfig, and the export and bench commands' defaults)
    train_cfg = TrainConfig(arch=arch, dataset=dataset, data_dir=str(data_dir) if data_dir else None, epochs=epochs,
                            seed=seed, device=device).resolved()
    search_args = dict(lam=lam, steps=steps, target_cost=target_cost, criterion=criterion, seed=seed, device=device)
    SearchConfig(source="(the train run)", **search_args).resolved()
    check_engines(engine or ["ort"])  # before training: the bench stage would otherwise stop after hours of work
    parse_int_tuple(batch, "--batch")
    if iters < 1:
        raise ProqhaError(f"--iters out of range: {iters}")
    train_dir, search_dir = next_run_dir("train", DEFAULT_ROOT), next_run_dir("search", DEFAULT_ROOT)
    err_console.print(f"[1/4] train -> {train_dir}")
    run_train(train_cfg, train_dir)
    err_console.print(f"[2/4] search -> {search_dir}")
    search_run(SearchConfig(source=str(train_dir), **search_args).resolved(), search_dir)
    err_console.print("[3/4] export")
    export(run=search_dir, device=device)
    err_console.print("[4/4] bench")
    bench(run=search_dir, engine=engine or ["ort"], batch=batch, iters=iters, plot=True, device=device)
