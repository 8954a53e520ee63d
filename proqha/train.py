"""Quantization-aware training: flat functions (``train_one_epoch``, ``evaluate``, ``fit``) that the
search's fine-tuning reuses. No printing here: callers pass callbacks for progress."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from proqha import distributed
from proqha.allocator import reuse_freed_memory
from proqha.builder import ModelRecipe, build_model
from proqha.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from proqha.compiling import maybe_compiled
from proqha.cost import cost_report
from proqha.data import get_dataset_spec, load_dataset
from proqha.data.custom import first_bad_label, outside_classes
from proqha.errors import ProqhaError, first_line
from proqha.files import append_jsonl, atomic_write_json, read_jsonl, write_jsonl
from proqha.health import OutputHealth, predicted_classes, predictions
from proqha.quant import BitConfig, QuantConfig, load_float_state_dict
from proqha.runs import removed_on_error, run_lock
from proqha.seeds import epoch_seed
from proqha.train_config import TrainConfig

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

SYNC_EVERY = 20
BatchCallback = Callable[[int, int, int, float], None]  # (epoch, batch index, batches, loss)
EpochCallback = Callable[[dict[str, Any]], None]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets) -> mean loss


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without it is a ProqhaError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ProqhaError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ProqhaError(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ProqhaError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, workers: int = 0,
                pin_memory: bool = False, shard: bool = False) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` (workers persist across epochs of one loader).

    ``shard``: under torchrun, each rank reads its share (DistributedSampler seeded by ``seed``) and
    ``batch_size`` stays the global batch (split evenly over ranks).
    """
    if shard and distributed.active():
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed)
        per_rank = max(1, batch_size // distributed.world_size())
        return DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=workers,
                          pin_memory=pin_memory, persistent_workers=workers > 0)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=workers,
                      drop_last=False, pin_memory=pin_memory, persistent_workers=workers > 0)


def calibrate(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
              num_classes: int | None = None) -> None:
    """Initialise quantizer ranges that are not yet set from the first ``batch_size`` training samples
    (the same on every rank, so every rank starts from the same ranges). A model that cannot run on the
    data, or whose output is not ``(batch, num_classes)`` logits, is a ProqhaError."""
    from proqha.quant import Quantizer

    if all(q.initialized for q in model.modules() if isinstance(q, Quantizer) and q.enabled):
        return
    x = torch.stack([dataset[i][0] for i in range(min(batch_size, len(dataset)))]).to(device)
    forward_checked(model, x, num_classes, "the model cannot run on the data (input {shape})")


def forward_checked(model: nn.Module, x: torch.Tensor, num_classes: int | None, what: str) -> None:
    """One training-mode forward without gradients (it sets quantizer ranges); ProqhaError ``what`` (with
    ``{shape}``) and the first line of the cause when the model cannot run on ``x``, or when its output
    is not (batch, num_classes) logits."""
    model.train()
    with torch.no_grad():
        try:
            out = model(x)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ProqhaError(f"{what.format(shape=tuple(x.shape))}: {first_line(exc)}") from exc
    check_logits(out, len(x), num_classes)


def check_logits(out: Any, batch: int, num_classes: int | None) -> None:
    """A classifier's output must be a ``(batch, num_classes)`` tensor (ProqhaError otherwise)."""
    if not isinstance(out, torch.Tensor):
        raise ProqhaError(f"the model returns {type(out).__name__}; expected a tensor of logits")
    want = (batch, num_classes) if num_classes is not None else None
    if out.dim() != 2 or out.shape[0] != batch or (want is not None and tuple(out.shape) != want):
        raise ProqhaError(f"the model's output has shape {tuple(out.shape)}; expected (batch, "
                          f"{num_classes if num_classes is not None else 'classes'}) = "
                          f"({batch}, {num_classes if num_classes is not None else '...'})")


@dataclass
class StepOptions:
    """How a training step runs: mixed precision for the float parts, memory format."""

    amp: str = "none"
    channels_last: bool = False

    def autocast(self, device: torch.device):
        dtype = AMP_DTYPES.get(self.amp)
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9
                   ) -> torch.optim.Optimizer:
    """SGD (Nesterov-free, momentum) or Adam; no weight decay on biases, BN and quantizer ranges."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def _topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> list[int]:
    """Rows whose target ranks below k, ties broken by the lower index as ``predictions`` breaks them (so
    top-1 is the deployed argmax's top-1, and top-k does not depend on the order ``topk`` gives ties)."""
    target = target.long().unsqueeze(1)
    t = logits.gather(1, target)
    lower = torch.arange(logits.shape[1], device=logits.device) < target
    rank = (logits > t).sum(1) + ((logits == t) & lower).sum(1)
    rank = torch.where(torch.isnan(logits).any(1), logits.shape[1], rank)  # a NaN row predicts nothing
    return [int((rank < k).sum()) for k in ks]


def first_non_finite(model: nn.Module) -> str:
    """Where a model went non-finite: the first parameter with NaN/inf, or that all parameters are finite
    (then an activation overflowed)."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            return f"parameter {name} is non-finite"
    return "parameters finite; the activations overflowed"


def not_class_indices(y: torch.Tensor, classes: int) -> bool:
    """Whether a batch of integer labels holds one outside 0..classes-1 (float targets are not checked)."""
    return not y.is_floating_point() and bool(outside_classes(y, classes).any())


def bad_label_error(loader: Iterable, y: torch.Tensor, classes: int, split: str, when: str) -> ProqhaError:
    """The one-line error for a batch (of ``split``, found ``when``) holding a label that is not a class index
    of a ``classes``-way model, naming the first such sample of the loader's dataset where it can be found."""
    wrong = y[outside_classes(y, classes)]
    value = int(wrong[0]) if len(wrong) else "?"
    dataset = getattr(loader, "dataset", None)
    found = first_bad_label(dataset, classes) if dataset is not None else None
    if found is not None:
        value = found[1]
    where = f" at sample {found[0]} of the {split} data" if found is not None else f" in the {split} data"
    return ProqhaError(f"label {value}{where} ({when}) is not a class index; labels must be class indices below "
                       f"the model's number of outputs ({classes})")


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    scheduler: Any, device: torch.device, epoch: int = 0,
                    on_batch: BatchCallback | None = None, options: StepOptions | None = None,
                    loss_fn: LossFn | None = None) -> dict[str, float]:
    """One pass over ``loader`` (``(x, y)`` batches); the scheduler steps every batch. Stops on a
    non-finite loss. ``loss_fn(logits, y)`` defaults to cross-entropy; top-1 reads ``y`` as class indices.

    On CUDA the loss is read back (finiteness, progress) every ``SYNC_EVERY`` batches only, so the step
    never waits for the host; on the CPU every batch.
    """
    options = options or StepOptions()
    model.train()
    scaler = torch.amp.GradScaler(device.type, enabled=options.amp == "fp16")
    memory = torch.channels_last if options.channels_last else torch.contiguous_format
    sync_every = 1 if device.type == "cpu" else SYNC_EVERY
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = torch.zeros((), device=device, dtype=torch.long)
    for i, (x, y_host) in enumerate(loader):
        x, y = x.to(device, non_blocking=True, memory_format=memory), y_host.to(device, non_blocking=True)
        with options.autocast(device):
            logits = model(x)
            if loss_fn is None and not_class_indices(y_host, logits.shape[1]):  # on the host: no device sync
                raise bad_label_error(loader, y_host, logits.shape[1], "training", f"epoch {epoch}, batch {i}")
            loss = (loss_fn or F.cross_entropy)(logits.float(), y)
        if (i % sync_every == 0 or i == len(loader) - 1) and not torch.isfinite(loss):
            raise ProqhaError(f"loss became {loss.item()} at epoch {epoch}, batch {i} ({first_non_finite(model)}); "
                              "lower --lr (the last good checkpoint is kept)")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += (predictions(logits.detach()) == y).sum()
        seen += len(y)
        if on_batch is not None and (i % sync_every == 0 or i == len(loader) - 1):
            on_batch(epoch, i, len(loader), float(loss.detach()))
    totals = distributed.all_reduce_sum(torch.stack([loss_sum, correct.to(loss_sum.dtype), seen.to(loss_sum.dtype)]))
    n = max(float(totals[2]), 1.0)
    return {"train_loss": float(totals[0]) / n, "train_top1": 100.0 * float(totals[1]) / n}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, loss_fn: LossFn | None = None,
             health: OutputHealth | None = None) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (percent) over ``loader``; ``loss_fn`` as in ``train_one_epoch``;
    ``health`` gathers what ``output_warnings`` reports."""
    model.eval()
    loss_sum, top1, top5, seen = 0.0, 0, 0, 0
    if health is not None:
        health.start(model)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        if health is not None:
            health.add(logits, y)
        if loss_fn is None:
            if not_class_indices(y, logits.shape[1]):
                raise bad_label_error(loader, y, logits.shape[1], "test", "evaluating")
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        else:
            loss_sum += float(loss_fn(logits.float(), y)) * len(y)
        c1, c5 = _topk_correct(logits, y, (1, 5))
        top1, top5, seen = top1 + c1, top5 + c5, seen + len(y)
    n = max(seen, 1)
    return {"test_loss": loss_sum / n, "test_top1": 100.0 * top1 / n, "test_top5": 100.0 * top5 / n}


def output_warnings(model: nn.Module, health: OutputHealth, loader: Iterable, device: torch.device) -> list[str]:
    """The warnings of an evaluation pass (``proqha.health``); the float twin is evaluated only when a class
    was never predicted."""
    from proqha.quant import float_twin

    lost = health.never_predicted()
    return health.warnings(predicted_classes(float_twin(model), loader, device) if lost else ())


def recipe_for(cfg: TrainConfig) -> ModelRecipe:
    """The model recipe a (resolved) training config describes."""
    data = get_dataset_spec(cfg.dataset, cfg.data_dir)
    quant = QuantConfig(**cfg.quant_options())
    return ModelRecipe(cfg.arch, data.num_classes, data.input_size[0], data.input_size, quant.to_dict())


def prepare_model(cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, ModelRecipe]:
    """Build the model of a resolved config, load ``--init`` weights and apply ``--bits-file``."""
    recipe = recipe_for(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(recipe)
    if cfg.init:
        state = load_checkpoint(Path(cfg.init))
        wanted = BitConfig.from_model(model)  # the checkpoint's weights and ranges, this run's bits
        try:
            load_float_state_dict(model, state.model)
        except (ValueError, RuntimeError) as exc:
            raise ProqhaError(f"--init {cfg.init} does not fit {cfg.arch}: {first_line(exc)}") from None
        wanted.apply(model)
    if cfg.bits_file:
        BitConfig.load(cfg.bits_file).apply(model)
    return model.to(device), recipe


def training_net(model: nn.Module, device: torch.device, compile: bool = False) -> nn.Module:
    """What a training loop calls: ``model`` under DistributedDataParallel when torchrun started several
    processes, then ``local_training_net``; parameters stay ``model``'s."""
    net = model
    if distributed.active():
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return local_training_net(net, device, compile)


def local_training_net(net: nn.Module, device: torch.device, compile: bool = False) -> nn.Module:
    """``net`` compiled with ``compile`` (``proqha.compiling``); on a CPU the C allocator is set to reuse
    freed memory (``proqha.allocator``)."""
    if device.type == "cpu":
        reuse_freed_memory()
    return maybe_compiled(net, compile)


def _checkpoint(model, optimizer, scheduler, epoch, best, cfg, recipe, row) -> Checkpoint:
    return Checkpoint("train", model.state_dict(), recipe.to_dict(), BitConfig.from_model(model).to_dict(),
                      {"dataset": cfg.dataset, "data_dir": cfg.data_dir, "download": cfg.download}, row,
                      cfg.to_dict(), optimizer.state_dict(), scheduler.state_dict(), epoch, best)


def fit(cfg: TrainConfig, run_dir: Path, resume: bool = False, on_batch: BatchCallback | None = None,
        on_epoch: EpochCallback | None = None, on_start: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (config.json, metrics.jsonl, bits.json, cost.json, checkpoints/).

    Data, model and options are all checked before anything is written; the run directory is locked
    while training. With ``resume``, continue from ``checkpoints/last.pt`` (from the start if a kill came
    before the first epoch completed): the same seed gives the same result as an uninterrupted run,
    because every epoch's data order and randomness derive from (seed, epoch).
    """
    run_dir = Path(run_dir)
    distributed.setup()
    device = distributed.local_device(resolve_device(cfg.device))
    data = get_dataset_spec(cfg.dataset, cfg.data_dir)
    train_set = load_dataset(cfg.dataset, "train", cfg.data_dir, cfg.download)
    test_set = load_dataset(cfg.dataset, "test", cfg.data_dir, cfg.download)
    model, recipe = prepare_model(cfg, device)
    calibrate(model, train_set, cfg.batch_size, device, data.num_classes)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
    steps_per_epoch = math.ceil(len(train_set) / distributed.world_size() /
                                max(1, cfg.batch_size // distributed.world_size()))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)
    if on_start is not None and distributed.is_main():
        on_start()  # everything is validated; nothing is written yet
    if not distributed.is_main():
        on_batch = on_epoch = None
    run = TrainingRun(model, recipe, optimizer, scheduler, train_set, test_set, data.num_classes, device)
    made_here = not run_dir.exists()
    with run_lock(run_dir) if distributed.is_main() else contextlib.nullcontext():
        with removed_on_error(run_dir, run_dir / "checkpoints" / "last.pt", keep=resume or not distributed.is_main(),
                              made_here=made_here):
            return _fit_locked(cfg, run_dir, resume, run, on_batch, on_epoch)


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


def replan_cosine(scheduler: torch.optim.lr_scheduler.CosineAnnealingLR, total_steps: int) -> None:
    """Stretch a cosine schedule to ``total_steps`` at the step it has reached (a run extended by
    ``--epochs``): each group's learning rate set to the closed form there, from which torch's recursive
    form then goes on (left alone, a schedule that reached its end stays at its minimum)."""
    scheduler.T_max = total_steps
    t = min(scheduler.last_epoch, total_steps)
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * t / total_steps)) / 2
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def _fit_locked(cfg: TrainConfig, run_dir: Path, resume: bool, run: TrainingRun, on_batch: BatchCallback | None,
                on_epoch: EpochCallback | None) -> dict[str, Any]:
    model, recipe, optimizer, scheduler, device = run.model, run.recipe, run.optimizer, run.scheduler, run.device
    train_set, test_set, num_classes = run.train_set, run.test_set, run.num_classes
    ckpt_dir = run_dir / "checkpoints"
    main = distributed.is_main()  # under torchrun only rank 0 writes
    start_epoch, best = 0, -1.0
    if resume and (ckpt_dir / "last.pt").is_file():
        state = load_checkpoint(ckpt_dir / "last.pt", device)
        load_float_state_dict(model, state.model)
        try:
            optimizer.load_state_dict(state.optimizer)
        except ValueError:  # another parameter layout: a run of an earlier proqha (its logits range learned)
            raise ProqhaError(f"--resume: {run_dir} was trained by an earlier version whose optimizer state does not "
                              f"fit this one; continue it as a new run: proqha train --init {ckpt_dir / 'last.pt'}"
                              ) from None
        planned = scheduler.T_max
        scheduler.load_state_dict(state.scheduler)
        start_epoch, best = int(state.epoch), float(state.best_top1)
        if cfg.epochs < start_epoch:
            raise ProqhaError(f"--epochs {cfg.epochs}: {run_dir} has already trained {start_epoch} epochs")
        if scheduler.T_max != planned:  # --epochs extended the run
            replan_cosine(scheduler, planned)
            if main:
                saved = json.loads((run_dir / "config.json").read_text())
                atomic_write_json(run_dir / "config.json", saved | {"epochs": cfg.epochs})
        kept = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["epoch"] <= start_epoch] \
            if (run_dir / "metrics.jsonl").exists() else []
        if main:
            write_jsonl(run_dir / "metrics.jsonl", kept)
    elif main:
        write_jsonl(run_dir / "metrics.jsonl", [])
        atomic_write_json(run_dir / "config.json", cfg.to_dict() | {"stage": "train", "recipe": recipe.to_dict(),
                                                                    "num_classes": num_classes})
    if main:
        BitConfig.from_model(model).save(run_dir / "bits.json")
        atomic_write_json(run_dir / "cost.json", cost_report(model, recipe.input_size).to_dict())
    net = training_net(model, device, cfg.compile)
    test_net = maybe_compiled(model, cfg.compile)
    test_loader = make_loader(test_set, cfg.batch_size, shuffle=False, workers=cfg.workers)
    row: dict[str, Any] = {}
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        torch.manual_seed(epoch_seed(cfg.seed, epoch))
        loader = make_loader(train_set, cfg.batch_size, shuffle=True, seed=epoch_seed(cfg.seed, epoch),
                             workers=cfg.workers, pin_memory=device.type == "cuda", shard=True)
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        row |= train_one_epoch(net, loader, optimizer, scheduler, device, epoch, on_batch,
                               StepOptions(cfg.amp, cfg.channels_last))
        health = OutputHealth()
        row |= evaluate(test_net, test_loader, device, health=health)
        row["time_s"] = time.perf_counter() - t0
        if warned := output_warnings(model, health, test_loader, device):
            row["warnings"] = warned
        row["images_per_s"] = len(train_set) / max(row["time_s"], 1e-9)
        state = _checkpoint(model, optimizer, scheduler, epoch, max(best, row["test_top1"]), cfg, recipe, row)
        improved = row["test_top1"] > best
        best = max(best, row["test_top1"])
        if main:
            append_jsonl(run_dir / "metrics.jsonl", row)
            if improved:
                save_checkpoint(state, ckpt_dir / "best.pt")
            save_checkpoint(state, ckpt_dir / "last.pt")
        if on_epoch is not None:
            on_epoch(row)
    return {"run_dir": str(run_dir), "best_top1": best, "last": row, "epochs": cfg.epochs}
