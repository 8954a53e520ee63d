"""Training a run folder (``train_run``): build and check the model and data of a ``TrainConfig``, then run the
epoch loop (``proqha.epoch_loop``) with a checkpoint and a metrics row per epoch, resumable at the same
seed. No printing here: callers pass callbacks for progress.

The training building blocks live in their own modules and are importable from here too: one epoch
(``proqha.train_step``), evaluation (``proqha.evaluation``), calibration (``proqha.calibration``), the
loaders (``proqha.loaders``) and the device (``proqha.devices``)."""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.data import Dataset

from proqha import distributed
from proqha.calibration import calibrate, check_logits, forward_checked
from proqha.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from proqha.compiling import maybe_compiled
from proqha.cost import cost_report
from proqha.devices import resolve_device
from proqha.epoch_loop import EpochCallback, EpochLoop, local_training_net, run_epochs, training_net
from proqha.errors import OptionError, ProqhaError
from proqha.evaluation import evaluate_loader, output_warnings
from proqha.files import append_jsonl, atomic_write_json, read_jsonl, write_jsonl
from proqha.loaders import make_loader
from proqha.quant import BitConfig, QuantConfig, Quantizer, load_float_state_dict
from proqha.recipe import ModelRecipe, build_model
from proqha.runs import RunDir, removed_on_error, run_lock
from proqha.seeds import epoch_seed
from proqha.train_config import TrainConfig
from proqha.train_step import (
    AMP_DTYPES,
    SYNC_EVERY,
    BatchCallback,
    LossFn,
    StepOptions,
    bad_label_error,
    first_non_finite,
    make_optimizer,
    not_class_indices,
    train_one_epoch,
)
from proqha.weights import WeightsMismatch, load_weights

__all__ = ["AMP_DTYPES", "SYNC_EVERY", "BatchCallback", "EpochCallback", "LossFn", "StepOptions", "TrainConfig",
           "TrainingRun", "bad_label_error", "calibrate", "check_logits", "evaluate_loader", "first_non_finite", "train_run",
           "forward_checked", "local_training_net", "make_loader", "make_optimizer", "not_class_indices",
           "output_warnings", "prepare_model", "recipe_for", "replan_cosine", "resolve_device", "train_one_epoch",
           "training_net"]


def recipe_for(cfg: TrainConfig) -> ModelRecipe:
    """The model recipe a (resolved) training config describes."""
    data = cfg.data_source().spec()
    quant = QuantConfig(**cfg.quant_options())
    num_classes = cfg.num_classes if cfg.num_classes is not None else data.num_classes  # the head's size
    return ModelRecipe(cfg.arch, num_classes, data.input_size[0], data.input_size, quant.to_dict())


def prepare_model(cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, ModelRecipe, list[str]]:
    """Build the model of a resolved config, load the ``init`` weights (any file ``proqha.weights`` reads) and
    apply the ``bits_file``; the model, its recipe and the notes of the loading (one line each)."""
    recipe = recipe_for(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(recipe)
    notes: list[str] = []
    if cfg.init:
        quantizers = [q for q in model.modules() if isinstance(q, Quantizer)]
        wanted = [q.bits for q in quantizers]  # the file's weights and ranges, this run's bits (adds included)
        try:
            notes = load_weights(model, cfg.init, recipe.num_classes)
        except WeightsMismatch as exc:
            raise OptionError("init", f"{cfg.init} does not fit {cfg.arch}: {exc.detail}") from None
        except ProqhaError as exc:
            raise OptionError("init", str(exc)) from None
        for q, bits in zip(quantizers, wanted):
            q.bits = bits
    if cfg.bits_file:
        BitConfig.load(cfg.bits_file).apply(model)
    return model.to(device), recipe, notes


@dataclass
class TrainingRun:
    """What a training run works on, built and checked before anything is written."""

    model: nn.Module
    recipe: ModelRecipe
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_set: Dataset
    test_set: Dataset
    num_classes: int | None
    device: torch.device
    notes: list[str] = field(default_factory=list)  # what loading the init weights said, one line each


def build_run(cfg: TrainConfig) -> TrainingRun:
    """The device, data, calibrated model, optimizer and cosine schedule (stepped per batch) of ``cfg``."""
    device = distributed.local_device(resolve_device(cfg.device))
    data = cfg.data_source()
    train_set = data.load("train")
    test_set = data.load("test")
    model, recipe, notes = prepare_model(cfg, device)
    calibrate(model, train_set, cfg.batch_size, device, recipe.num_classes)  # the head's logits
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    steps_per_epoch = math.ceil(len(train_set) / distributed.world_size() /
                                max(1, cfg.batch_size // distributed.world_size()))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)
    return TrainingRun(model, recipe, optimizer, scheduler, train_set, test_set, recipe.num_classes, device, notes)


def train_run(cfg: TrainConfig, run_dir: Path, resume: bool = False, on_batch: BatchCallback | None = None,
        on_epoch: EpochCallback | None = None, on_start: Callable[[], None] | None = None,
        on_note: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (config.json, metrics.jsonl, bits.json, cost.json, checkpoints/).
    ``on_note`` gets each note of the run's start (a re-initialised head of the ``init`` file), after ``on_start``.

    Data, model and options are all checked before anything is written; the run directory is locked
    while training. With ``resume``, continue from ``checkpoints/last.pt`` (from the start if a kill came
    before the first epoch completed): the same seed gives the same result as an uninterrupted run,
    because every epoch's data order and randomness derive from (seed, epoch).
    """
    run_dir = Path(run_dir)
    distributed.setup()
    run = build_run(cfg)
    if on_start is not None and distributed.is_main():
        on_start()  # everything is validated; nothing is written yet
    if on_note is not None and distributed.is_main():
        for note in run.notes:
            on_note(note)
    if not distributed.is_main():
        on_batch = on_epoch = None
    made_here = not run_dir.exists()
    with run_lock(run_dir) if distributed.is_main() else contextlib.nullcontext():
        with removed_on_error(run_dir, RunDir(run_dir).last, keep=resume or not distributed.is_main(),
                              made_here=made_here):
            return _fit_locked(cfg, RunDir(run_dir), resume, run, on_batch, on_epoch)


def replan_cosine(scheduler: torch.optim.lr_scheduler.CosineAnnealingLR, total_steps: int) -> None:
    """Stretch a cosine schedule to ``total_steps`` at the step it has reached (a resumed run given more
    ``epochs``): each group's learning rate set to the closed form there, from which torch's recursive
    form then goes on (left alone, a schedule that reached its end stays at its minimum)."""
    scheduler.T_max = total_steps
    t = min(scheduler.last_epoch, total_steps)
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * t / total_steps)) / 2
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def _resume(cfg: TrainConfig, layout: RunDir, run: TrainingRun) -> tuple[int, float]:
    """Load the run's last checkpoint into ``run`` (stretching the schedule when ``cfg.epochs`` grew) and
    cut its metrics to the epochs it holds; the epochs done and the best top-1 so far."""
    run_dir, last = layout.path, layout.last
    state = load_checkpoint(last, run.device)
    load_float_state_dict(run.model, state.model)
    try:
        run.optimizer.load_state_dict(state.optimizer)
    except ValueError:  # another parameter layout: a run of an earlier proqha (its logits range learned)
        raise ProqhaError(f"cannot resume {run_dir}: an earlier version trained it, whose optimizer state does not "
                          f"fit this one; start a new run from its weights instead (init {last})") from None
    planned = run.scheduler.T_max
    run.scheduler.load_state_dict(state.scheduler)
    start_epoch, best = int(state.epoch), float(state.best_top1)
    if cfg.epochs < start_epoch:
        raise OptionError("epochs", f"{cfg.epochs}: {run_dir} has already trained {start_epoch} epochs")
    main = distributed.is_main()  # under torchrun only rank 0 writes
    if run.scheduler.T_max != planned:  # more epochs than the run was started with
        replan_cosine(run.scheduler, planned)
        if main:
            saved = json.loads(layout.config.read_text())
            layout.write_config(saved | {"epochs": cfg.epochs})
    kept = [r for r in read_jsonl(layout.metrics) if r["epoch"] <= start_epoch] if layout.metrics.exists() else []
    if main:
        write_jsonl(layout.metrics, kept)
    return start_epoch, best


def _epoch_batches(cfg: TrainConfig, run: TrainingRun) -> Callable[[int], Iterable]:
    """An epoch's training batches; its data order and randomness derive from (seed, epoch) alone."""

    def batches(epoch: int) -> Iterable:
        torch.manual_seed(epoch_seed(cfg.seed, epoch))
        return make_loader(run.train_set, cfg.batch_size, shuffle=True, seed=epoch_seed(cfg.seed, epoch),
                           workers=cfg.workers, pin_memory=run.device.type == "cuda", shard=True)

    return batches


class _Recorder:
    """The per-epoch callback of a run folder: throughput, the metrics row, ``last.pt`` and (when top-1
    improved) ``best.pt``, then the caller's ``on_epoch``."""

    def __init__(self, cfg: TrainConfig, layout: RunDir, run: TrainingRun, best: float,
                 on_epoch: EpochCallback | None) -> None:
        self.cfg, self.layout, self.run, self.best, self.on_epoch = cfg, layout, run, best, on_epoch
        self.data = cfg.data_source().to_dict()  # where the data came from, class names included

    def __call__(self, row: dict[str, Any]) -> None:
        run = self.run
        row["images_per_s"] = len(run.train_set) / max(row["time_s"], 1e-9)
        state = Checkpoint("train", run.model.state_dict(), run.recipe.to_dict(),
                           BitConfig.from_model(run.model).to_dict(),
                           self.data,
                           row, self.cfg.to_dict(), run.optimizer.state_dict(), run.scheduler.state_dict(),
                           row["epoch"], max(self.best, row["test_top1"]))
        improved = row["test_top1"] > self.best
        self.best = max(self.best, row["test_top1"])
        if distributed.is_main():
            append_jsonl(self.layout.metrics, row)
            if improved:
                save_checkpoint(state, self.layout.best)
            save_checkpoint(state, self.layout.last)
        if self.on_epoch is not None:
            self.on_epoch(row)


def _fit_locked(cfg: TrainConfig, layout: RunDir, resume: bool, run: TrainingRun, on_batch: BatchCallback | None,
                on_epoch: EpochCallback | None) -> dict[str, Any]:
    main = distributed.is_main()  # under torchrun only rank 0 writes
    start_epoch, best = 0, -1.0
    if resume and layout.last.is_file():
        start_epoch, best = _resume(cfg, layout, run)
    elif main:
        write_jsonl(layout.metrics, [])
        names = cfg.data_source().spec().class_names  # what the outputs mean, when the dataset names them
        layout.write_config(cfg.to_dict() | {"stage": "train", "recipe": run.recipe.to_dict(),
                                             "num_classes": run.num_classes}
                            | ({"class_names": list(names)} if names is not None else {}))
    if main:
        BitConfig.from_model(run.model).save(layout.bits)
        atomic_write_json(layout.cost, cost_report(run.model, run.recipe.input_size).to_dict())
    net = training_net(run.model, run.device, cfg.compile)
    test_net = maybe_compiled(run.model, cfg.compile)
    test_loader = make_loader(run.test_set, cfg.batch_size, shuffle=False, workers=cfg.workers)
    loop = EpochLoop(run.model, net, run.optimizer, run.scheduler, run.device, _epoch_batches(cfg, run), test_loader,
                     eval_net=test_net, options=StepOptions(cfg.amp, cfg.channels_last), on_batch=on_batch)
    recorder = _Recorder(cfg, layout, run, best, on_epoch)
    rows = run_epochs(loop, range(start_epoch + 1, cfg.epochs + 1), recorder)
    return {"run_dir": str(layout.path), "best_top1": recorder.best, "last": rows[-1] if rows else {},
            "epochs": cfg.epochs}
