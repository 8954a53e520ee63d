"""The API's model stages: quantize a model, train it (QAT), evaluate it."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable

import torch
from torch import nn

from proqha.api.common import Batch, place, warn_rows
from proqha.errors import OptionError, ProqhaError
from proqha.metrics import Metric, metric_of
from proqha.options import declared, default
from proqha.ptq_config import PTQConfig
from proqha.train_config import (
    API_FIT_EPOCHS,
    API_FIT_OPTIMIZER,
    API_FIT_WEIGHT_DECAY,
    DEFAULT_LR,
    TrainConfig,
    check_train_option,
)
from proqha.train_step import LossFn


def quantize(model: nn.Module, example_input: torch.Tensor, bits: int = 8, *,
             calib_data: Iterable[torch.Tensor | Batch] | None = None,
             calib_method: str = default(PTQConfig, "calib_method"),
             bn_recalib: bool | None = default(PTQConfig, "bn_recalib"), **options: Any) -> nn.Module:
    """The quantized twin of ``model`` (left untouched), its quantizer ranges calibrated on ``example_input``.

    ``bits``: starting weight/activation bits of the searchable layers (2..8, or 32 for float);
    ``options``: the other ``proqha.quant.QuantConfig`` fields (``weight_quantizer``, ``edge_layers``, ...).
    ``calib_data``: batches (input tensors, or (input, label) pairs as a DataLoader gives) to calibrate on
    instead, post-training quantization as ``proqha quantize`` does it: ``calib_method`` minmax,
    percentile or mse (``proqha.ptq_config.PTQConfig``), and with ``bn_recalib`` BatchNorm statistics
    re-estimated under quantization (None: when a layer is below 6 bit). The result is a plain ``nn.Module`` (in train mode without
    ``calib_data``, for your own training loop or ``fit``; in eval mode with it)."""
    from proqha.calibration import forward_checked
    from proqha.options import check_options
    from proqha.quant import QuantConfig, quantize_model

    if not isinstance(model, nn.Module):
        raise ProqhaError(f"quantize: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        raise ProqhaError("quantize: example_input must be a batch tensor (batch, channels, ...)")
    ptq = PTQConfig(calib_method=calib_method, bn_recalib=bn_recalib)
    check_options(ptq)
    try:
        config = QuantConfig(bits=bits, **options)
    except (TypeError, ValueError) as exc:
        raise ProqhaError(f"quantize: {exc}") from None
    qmodel = quantize_model(model, config, tuple(example_input.shape[1:]))
    norms = [m for m in qmodel.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    kept = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    forward_checked(qmodel, example_input, None, "quantize: the model cannot run on example_input {shape}")
    for m, state in zip(norms, kept):  # the check's training-mode forward leaves the trained statistics alone
        m.load_state_dict(state)
    if calib_data is not None:
        from proqha.quant.ptq import calibrate_ranges, lowest_bits, recalibrate_batchnorm

        batches = [b[0] if isinstance(b, (tuple, list)) else b for b in calib_data]
        if not batches:
            raise OptionError("calib_data", "holds no batch")
        device = next(qmodel.parameters(), example_input).device
        calibrate_ranges(qmodel, batches, calib_method, device)
        if ptq.recalibrates(lowest_bits(qmodel)):
            recalibrate_batchnorm(qmodel, batches, device)
    return qmodel


def fit(qmodel: nn.Module, train_loader: Iterable[Batch], test_loader: Iterable[Batch] | None = None, *,
        epochs: int = API_FIT_EPOCHS, lr: float | None = None,
        optimizer: str | torch.optim.Optimizer = API_FIT_OPTIMIZER, weight_decay: float = API_FIT_WEIGHT_DECAY,
        loss: LossFn | None = None, metric: str | Metric | None = None, device: str | torch.device | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None, compile: bool = False) -> list[dict[str, Any]]:
    """Train ``qmodel`` (quantization-aware) for ``epochs`` over ``train_loader``; returns one dict per epoch
    (``epoch``, ``lr``, ``train_loss``, ``train_top1``, with ``test_loader`` also ``test_loss``, ``test_top1``,
    ``test_top5``; ``time_s``).

    ``optimizer``: "adam" or "sgd" (momentum 0.9; ``lr`` defaults to 1e-3 and 0.1), with a per-batch cosine
    schedule and no weight decay on biases, BN and quantizer ranges; or your own optimizer, used as it is.
    These defaults differ from ``proqha train``'s on purpose (``proqha.train_config``, ``API_FIT_*``).
    ``loss(logits, targets)`` defaults to cross-entropy. A dense prediction (batch, classes, H, W) with
    (batch, H, W) labels trains and is judged per pixel; ``metric`` ("top1", "pixel_accuracy", "miou" or a
    ``proqha.metrics.Metric``) is evaluated beside top-1 as ``test_metric``. ``device``: None keeps the
    model where it is.
    ``compile``: run training and evaluation through ``torch.compile`` (eagerly, with one warning, where it
    cannot compile). On a CPU this sets glibc's allocator to keep freed memory for the rest of the process
    (``proqha.epoch_loop.local_training_net``: training steps reuse it instead of faulting pages in again).
    """
    from proqha.epoch_loop import EpochLoop, local_training_net, run_epochs

    for name, value in (("epochs", epochs), ("lr", lr), ("weight_decay", weight_decay)):
        check_train_option(name, value)
    dev = place(qmodel, device)
    opt, scheduler = _optimizer(qmodel, optimizer, lr, weight_decay, epochs * _batches(train_loader))
    loop = EpochLoop(qmodel, local_training_net(qmodel, dev, compile), opt, scheduler, dev, lambda epoch: train_loader,
                     test_loader, loss_fn=loss, metric=metric_of(metric))

    def warn_then_report(row: dict[str, Any]) -> None:
        for line in row.get("warnings", ()):
            warnings.warn(f"epoch {row['epoch']}: {line}", stacklevel=4)  # at the caller of fit
        if on_epoch is not None:
            on_epoch(row)

    return run_epochs(loop, range(1, epochs + 1), warn_then_report)


def _batches(loader: Iterable[Batch]) -> int:
    """Batches per epoch, for the cosine schedule (1 for a loader without a length)."""
    return len(loader) if hasattr(loader, "__len__") else 1  # type: ignore[arg-type]


def _optimizer(qmodel: nn.Module, optimizer: str | torch.optim.Optimizer, lr: float | None, weight_decay: float,
               steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """The user's optimizer as it is (no schedule), or the named one with a cosine schedule over ``steps``."""
    from proqha.train_step import make_optimizer

    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer, None
    choices = declared(TrainConfig, "optimizer").choices or ()
    if optimizer not in choices:
        raise OptionError("optimizer", f"must be one of {', '.join(choices)} or a torch optimizer, got {optimizer!r}")
    opt = make_optimizer(qmodel, optimizer, lr if lr is not None else DEFAULT_LR[optimizer], weight_decay)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))


def evaluate(qmodel: nn.Module, loader: Iterable[Batch], loss: LossFn | None = None,
             device: str | torch.device | None = None, metric: str | Metric | None = None) -> dict[str, float]:
    """``test_loss``, ``test_top1`` and ``test_top5`` (percent; per pixel for a dense prediction) of
    ``qmodel`` over ``loader``, with ``metric`` (as in ``fit``) also ``test_metric``, in eval mode
    (where quantized layers compute as the deployed integer kernels do). A class never predicted while the
    float network predicts it, or logits at their quantizer's limit, are warned about (``warnings``) and
    listed under ``warnings``."""
    from proqha.evaluation import evaluate_loader as run_evaluate
    from proqha.evaluation import output_warnings
    from proqha.health import OutputHealth

    dev, health = place(qmodel, device), OutputHealth()
    row: dict[str, Any] = dict(run_evaluate(qmodel, loader, dev, loss, health, metric_of(metric)))
    warn_rows(row, output_warnings(qmodel, health, loader, dev), "")
    return row
