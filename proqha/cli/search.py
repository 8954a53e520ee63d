"""`proqha search`: the progressive mixed-precision search from a trained checkpoint. Its options are
``SearchConfig``'s declarations (``proqha.search.config``); the search itself is ``proqha.search.run_search``."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated, Optional

import typer

from proqha.cli.common import (
    declared_option,
    fresh_run_dir,
    handle_errors,
    resume_config,
)
from proqha.cli.search_report import search_run
from proqha.errors import ProqhaError
from proqha.options import declared, default
from proqha.runs import DEFAULT_ROOT, latest_model_run
from proqha.search.config import SearchConfig

S = SearchConfig
SOURCE_HELP = f"{declared(S, 'source').help[:-1]} (default: the newest train or quantize run)."
STEPS_HELP = f"{declared(S, 'steps').help[:-1]} (default {default(S, 'steps')}; with --resume, extends the run)."


@handle_errors(flags={"source": "--from"})
def search(
    ctx: typer.Context,
    source: Annotated[Optional[Path], typer.Option("--from", help=SOURCE_HELP)] = None,
    lam: Annotated[float, declared_option(S, "lam")] = default(S, "lam"),
    candidates: Annotated[int, declared_option(S, "candidates")] = default(S, "candidates"),
    ratio: Annotated[float, declared_option(S, "ratio")] = default(S, "ratio"),
    interval: Annotated[int, declared_option(S, "interval")] = default(S, "interval"),
    min_bits: Annotated[int, declared_option(S, "min_bits")] = default(S, "min_bits"),
    criterion: Annotated[str, declared_option(S, "criterion")] = default(S, "criterion"),
    steps: Annotated[Optional[int], typer.Option(help=STEPS_HELP)] = None,
    finetune_epochs: Annotated[int, declared_option(S, "finetune_epochs")] = default(S, "finetune_epochs"),
    lr: Annotated[float, declared_option(S, "lr")] = default(S, "lr"),
    weight_decay: Annotated[float, declared_option(S, "weight_decay")] = default(S, "weight_decay"),
    batch_size: Annotated[int, declared_option(S, "batch_size")] = default(S, "batch_size"),
    cost_metric: Annotated[Optional[str], declared_option(S, "cost_metric")] = default(S, "cost_metric"),
    target_cost: Annotated[Optional[float], declared_option(S, "target_cost")] = default(S, "target_cost"),
    target_bitops: Annotated[Optional[float], declared_option(S, "target_bitops")] = default(S, "target_bitops"),
    target_size_mb: Annotated[Optional[float], declared_option(S, "target_size_mb")] = default(S, "target_size_mb"),
    target_file_kb: Annotated[Optional[float], declared_option(S, "target_file_kb")] = default(S, "target_file_kb"),
    target_latency_ms: Annotated[Optional[float], declared_option(S, "target_latency_ms")] = default(S, "target_latency_ms"),
    target_latency_ratio: Annotated[Optional[float], declared_option(S, "target_latency_ratio")] = default(S, "target_latency_ratio"),
    latency_engine: Annotated[str, declared_option(S, "latency_engine")] = default(S, "latency_engine"),
    latency_batch: Annotated[int, declared_option(S, "latency_batch")] = default(S, "latency_batch"),
    strategy: Annotated[str, declared_option(S, "strategy")] = default(S, "strategy"),
    table_data: Annotated[str, declared_option(S, "table_data")] = default(S, "table_data"),
    knobs: Annotated[str, declared_option(S, "knobs")] = default(S, "knobs"),
    fixed_bits: Annotated[Optional[int], declared_option(S, "fixed_bits")] = default(S, "fixed_bits"),
    fit_budget: Annotated[bool, declared_option(S, "fit_budget")] = default(S, "fit_budget"),
    final_epochs: Annotated[int, declared_option(S, "final_epochs")] = default(S, "final_epochs"),
    uniform_floor: Annotated[bool, declared_option(S, "uniform_floor")] = default(S, "uniform_floor"),
    select_final: Annotated[bool, declared_option(S, "select_final")] = default(S, "select_final"),
    select_candidates: Annotated[int, declared_option(S, "select_candidates")] = default(S, "select_candidates"),
    select_epochs: Annotated[int, declared_option(S, "select_epochs")] = default(S, "select_epochs"),
    seed: Annotated[int, declared_option(S, "seed")] = default(S, "seed"),
    device: Annotated[str, declared_option(S, "device")] = default(S, "device"),
    workers: Annotated[int, declared_option(S, "workers")] = default(S, "workers"),
    compile: Annotated[bool, declared_option(S, "compile", "--compile")] = default(S, "compile"),
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
            source = latest_model_run(DEFAULT_ROOT)
            if source is None:
                raise ProqhaError(f"no train or quantize run under {DEFAULT_ROOT}/ to search from; run `proqha train` "
                                  "or `proqha quantize`, or pass --from")
        given = {f.name: ctx.params[f.name] for f in fields(SearchConfig) if f.name in ctx.params}
        cfg = SearchConfig(**(given | {"source": str(source), "steps": default(S, "steps") if steps is None else steps})
                           ).resolved()
        run_dir = distributed.decide_on_main(lambda: fresh_run_dir("search", run_dir))
    search_run(cfg, run_dir, resume)
