"""`proqha pipeline`: train -> search -> export -> bench in one command, with defaults that finish offline. It
chains the library's stage functions, printed by the same presenters as the single commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from proqha.cli.bench_report import report
from proqha.cli.common import declared_option, err_console, handle_errors, parse_int_tuple
from proqha.cli.export_report import export_and_report
from proqha.cli.search_report import search_run
from proqha.cli.train_report import run_train
from proqha.deploy.bench_config import BenchOptions as B
from proqha.options import default
from proqha.runs import DEFAULT_ROOT, next_run_dir
from proqha.search.config import SearchConfig as S
from proqha.train_config import TrainConfig as T

BATCHES = ",".join(map(str, default(B, "batches")))


@handle_errors(flags={"engines": "--engine", "batches": "--batch"})
def pipeline(
    arch: Annotated[Optional[str], declared_option(T, "arch")] = default(T, "arch"),
    dataset: Annotated[str, declared_option(T, "dataset")] = default(T, "dataset"),
    data_dir: Annotated[Optional[Path], declared_option(T, "data_dir")] = None,
    epochs: Annotated[int, typer.Option(help="QAT epochs at 8 bit.")] = default(T, "epochs"),
    lam: Annotated[float, declared_option(S, "lam")] = default(S, "lam"),
    steps: Annotated[int, declared_option(S, "steps")] = default(S, "steps"),
    target_cost: Annotated[Optional[float], declared_option(S, "target_cost")] = default(S, "target_cost"),
    criterion: Annotated[str, declared_option(S, "criterion")] = default(S, "criterion"),
    engine: Annotated[Optional[list[str]], typer.Option(help="Bench engines: ort, openvino, trt, torch (repeatable).")] = None,
    batch: Annotated[str, typer.Option(help="Bench batch sizes.")] = BATCHES,
    iters: Annotated[int, typer.Option(help="Bench timed runs per batch size.")] = default(B, "iters"),
    seed: Annotated[int, declared_option(T, "seed")] = default(T, "seed"),
    device: Annotated[str, declared_option(T, "device")] = default(T, "device"),
) -> None:
    """Train, search, export (validated) and benchmark; ends with the latency/cost/accuracy table."""
    from proqha.deploy.bench import check_timing
    from proqha.deploy.bench_run import bench_run
    from proqha.deploy.runtime import check_engines
    from proqha.export.config import ExportConfig

    # every stage's options are checked before the first stage starts; what is not an option here is the
    # stage's own declared default (TrainConfig, SearchConfig, ExportConfig, bench_run)
    train_cfg = T(arch=arch, dataset=dataset, data_dir=str(data_dir) if data_dir else None, epochs=epochs,
                  seed=seed, device=device).resolved()
    search_args = dict(lam=lam, steps=steps, target_cost=target_cost, criterion=criterion, seed=seed, device=device)
    S(source="(the train run)", **search_args).resolved()
    engines = check_engines(engine or ["ort"], "engines")  # before training: not after hours of work
    batches = check_timing(parse_int_tuple(batch, "--batch"), default(B, "warmup"), iters)
    train_dir, search_dir = next_run_dir("train", DEFAULT_ROOT), next_run_dir("search", DEFAULT_ROOT)
    err_console.print(f"[1/4] train -> {train_dir}")
    run_train(train_cfg, train_dir)
    err_console.print(f"[2/4] search -> {search_dir}")
    search_run(S(source=str(train_dir), **search_args).resolved(), search_dir)
    err_console.print("[3/4] export")
    export_and_report(ExportConfig(run=search_dir, device=device))
    err_console.print("[4/4] bench")
    report(bench_run(search_dir, engines=engines, batches=batches, iters=iters, plot=True, device=device,
                     on_note=lambda line: err_console.print(line, markup=False)))
