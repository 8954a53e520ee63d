"""One training epoch: the optimizer training uses (``make_optimizer``), how a step runs (``StepOptions``:
mixed precision, memory format) and ``train_one_epoch``, which stops with one line on a non-finite loss
or a label that is not a class index. The run-folder training, the API's ``fit`` and the search's
fine-tuning all step through here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from proqha import distributed
from proqha.data.custom import first_bad_label, outside_classes
from proqha.errors import ProqhaError, first_line
from proqha.health import predictions

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

SYNC_EVERY = 20
BatchCallback = Callable[[int, int, int, float], None]  # (epoch, batch index, batches, loss)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets) -> mean loss


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


def forward(model: nn.Module, x: torch.Tensor, first: bool, split: str) -> torch.Tensor:
    """``model(x)``; on a loader's first batch, an input the model cannot take (a wrong channel count or
    size) is one ``ProqhaError`` line naming the batch's shape instead of PyTorch's traceback."""
    if not first:
        return model(x)
    try:
        return model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ProqhaError(f"the model cannot run on the {split} data's batches (inputs of shape {tuple(x.shape)}): "
                          f"{first_line(exc)}") from None


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


class _Totals:
    """Loss, correct and seen summed on the device over an epoch (read back once, at its end); ``seen``
    counts predictions (images, or the pixels of a dense prediction), ``samples`` images."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen = torch.zeros((), device=device, dtype=torch.long)
        self.samples = torch.zeros((), device=device, dtype=torch.long)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += loss.detach() * len(y)
        picked = predictions(logits.detach())
        self.correct += (picked == y).sum()
        self.seen += picked.numel()
        self.samples += len(y)

    def row(self) -> dict[str, float]:
        """``train_loss`` (per sample) and ``train_top1`` over every rank's batches."""
        totals = distributed.all_reduce_sum(torch.stack([self.loss, self.correct.to(self.loss.dtype),
                                                         self.seen.to(self.loss.dtype),
                                                         self.samples.to(self.loss.dtype)]))
        return {"train_loss": float(totals[0]) / max(float(totals[3]), 1.0),
                "train_top1": 100.0 * float(totals[1]) / max(float(totals[2]), 1.0)}


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
    totals = _Totals(device)
    for i, (x, y_host) in enumerate(loader):
        x, y = x.to(device, non_blocking=True, memory_format=memory), y_host.to(device, non_blocking=True)
        with options.autocast(device):
            logits = forward(model, x, i == 0, "training")
            if loss_fn is None and not_class_indices(y_host, logits.shape[1]):  # on the host: no device sync
                raise bad_label_error(loader, y_host, logits.shape[1], "training", f"epoch {epoch}, batch {i}")
            loss = (loss_fn or F.cross_entropy)(logits.float(), y)
        read_back = i % sync_every == 0 or i == len(loader) - 1
        if read_back and not torch.isfinite(loss):
            raise ProqhaError(f"loss became {loss.item()} at epoch {epoch}, batch {i} ({first_non_finite(model)}); "
                              "lower the learning rate (lr)")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        totals.add(loss, logits, y)
        if on_batch is not None and read_back:
            on_batch(epoch, i, len(loader), float(loss.detach()))
    return totals.row()
