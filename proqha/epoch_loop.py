"""The loop over epochs that every training path runs (``run_epochs``): train one epoch, evaluate, gather
the output-health warnings, time it and hand each epoch's row to a callback. The run-folder training
(``proqha.train.train_run``, which saves checkpoints in that callback) and the API's ``proqha.fit`` call it;
``training_net`` is what the loop trains (DDP under torchrun, compiled, glibc malloc tuned on a CPU)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from proqha import distributed
from proqha.compiling import maybe_compiled
from proqha.evaluation import evaluate_loader, output_warnings
from proqha.health import OutputHealth
from proqha.malloc_tuning import reuse_freed_memory
from proqha.metrics import Metric
from proqha.train_step import BatchCallback, LossFn, StepOptions, train_one_epoch

EpochCallback = Callable[[dict[str, Any]], None]


@dataclass
class EpochLoop:
    """What the loop trains and evaluates. ``net`` is what trains (``model`` wrapped: ``training_net``),
    ``eval_net`` what evaluates (default ``net``), ``model`` the module itself (its float twin answers the
    warnings); ``train_batches(epoch)`` gives an epoch's training batches; without ``test_loader`` an epoch
    is not evaluated."""

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    train_batches: Callable[[int], Iterable]
    test_loader: Iterable | None = None
    eval_net: nn.Module | None = None
    loss_fn: LossFn | None = None
    options: StepOptions | None = None
    on_batch: BatchCallback | None = None
    metric: Metric | None = None  # evaluated beside top-1 as test_metric


def run_epoch(loop: EpochLoop, epoch: int) -> dict[str, Any]:
    """Train and evaluate one epoch: its row holds ``epoch``, ``lr`` (at its start), ``train_loss``,
    ``train_top1``, with a test loader ``test_loss``, ``test_top1``, ``test_top5``, then ``time_s`` (training
    and evaluation) and, when there are any, ``warnings``."""
    t0 = time.perf_counter()
    batches = loop.train_batches(epoch)
    row: dict[str, Any] = {"epoch": epoch, "lr": loop.optimizer.param_groups[0]["lr"]}
    row |= train_one_epoch(loop.net, batches, loop.optimizer, loop.scheduler, loop.device, epoch, loop.on_batch,
                           loop.options, loop.loss_fn)
    health = None
    if loop.test_loader is not None:
        health = OutputHealth()
        row |= evaluate_loader(loop.eval_net or loop.net, loop.test_loader, loop.device, loop.loss_fn, health,
                               loop.metric)
    row["time_s"] = time.perf_counter() - t0
    if health is not None and (warned := output_warnings(loop.model, health, loop.test_loader, loop.device)):
        row["warnings"] = warned
    return row


def run_epochs(loop: EpochLoop, epochs: Iterable[int], on_epoch: EpochCallback | None = None
               ) -> list[dict[str, Any]]:
    """``run_epoch`` for each of ``epochs`` (numbered from 1), ``on_epoch(row)`` after each; the rows."""
    rows = []
    for epoch in epochs:
        row = run_epoch(loop, epoch)
        rows.append(row)
        if on_epoch is not None:
            on_epoch(row)
    return rows


def training_net(model: nn.Module, device: torch.device, compile: bool = False) -> nn.Module:
    """What a training loop calls: ``model`` under DistributedDataParallel when torchrun started several
    processes, then ``local_training_net``; parameters stay ``model``'s."""
    net = model
    if distributed.active():
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return local_training_net(net, device, compile)


def local_training_net(net: nn.Module, device: torch.device, compile: bool = False) -> nn.Module:
    """``net`` compiled with ``compile`` (``proqha.compiling``); on a CPU glibc's malloc is set to reuse
    freed memory (``proqha.malloc_tuning``)."""
    if device.type == "cpu":
        reuse_freed_memory()
    return maybe_compiled(net, compile)
