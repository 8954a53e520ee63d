"""The Python API: the CLI's stages as one call each, on your own ``nn.Module`` and DataLoaders.

    qmodel = proqha.quantize(net, example_batch)                      # quantized twin, ranges calibrated
    proqha.fit(qmodel, train_loader, test_loader, epochs=5)           # quantization-aware training
    result = proqha.search_bits(qmodel, train_loader, calib_loader, test_loader, steps=4)
    proqha.export_onnx(qmodel, "model.onnx", (1, 28, 28), test_loader)  # validated QDQ ONNX
    rows = proqha.bench(qmodel, (1, 28, 28), test_data=test_loader)   # latency next to cost figures

Batches are ``(inputs, class indices)`` pairs. Bad arguments raise ``ProqhaError`` with one line.
Export and benchmark code is imported on first use, so ``import proqha`` stays light.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from proqha.errors import ProqhaError
from proqha.train import LossFn

Batch = tuple[torch.Tensor, torch.Tensor]
InputSize = Sequence[int] | torch.Tensor


class ExportError(ProqhaError):
    """The exported graph failed validation; nothing was written. ``report`` says what was measured."""

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class SearchResult:
    """What ``search_bits`` found.

    model: the searched model (the one passed in, now at the last step's bits).
    steps: one dict per step, step 0 being the start: ``cost`` (paper cost), ``bitops``, ``bitops_ratio``,
        ``size_bytes``, ``score``, ``train_top1``, ``test_top1``, ``test_top5``, ``wall_s``, and ``bits``
        (``{layer: {"w": bits, "a": bits}}``).
    stopped: "steps", "target" (a target was met) or "floor" (no knob could be lowered).
    run_dir: where frontier.csv and the step checkpoints went, when one was given.
    """

    model: nn.Module
    steps: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = "steps"
    run_dir: Path | None = None


def _model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _place(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """The device to run on: ``device`` (``auto`` picks CUDA when present) or where the model already is."""
    from proqha.train import resolve_device

    if device is None:
        return _model_device(model)
    target = resolve_device(device) if isinstance(device, str) else device
    model.to(target)
    return target


def _size(input_size: InputSize) -> tuple[int, ...]:
    """``(C, H, W)`` from a shape or from an example batch (its shape after the batch dimension)."""
    try:
        size = tuple(input_size.shape[1:]) if isinstance(input_size, torch.Tensor) else tuple(input_size)
    except TypeError:  # a single number
        size = ()
    if not size or not all(isinstance(v, int) and v > 0 for v in size):
        raise ProqhaError(f"input_size must be positive ints such as (channels, height, width), got {input_size!r}")
    return size


def quantize(model: nn.Module, example_input: torch.Tensor, bits: int = 8, **options: Any) -> nn.Module:
    """The quantized twin of ``model`` (left untouched), its quantizer ranges calibrated on ``example_input``.

    ``bits``: starting weight/activation bits of the searchable layers (2..8, or 32 for float);
    ``options``: the other ``proqha.quant.QuantConfig`` fields (``weight_quantizer``, ``edge_layers``, ...).
    The result is a plain ``nn.Module`` (in train mode) for your own training loop or ``fit``.
    """
    from proqha.quant import QuantConfig, quantize_model
    from proqha.train import forward_checked

    if not isinstance(model, nn.Module):
        raise ProqhaError(f"quantize: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        raise ProqhaError("quantize: example_input must be a batch tensor (batch, channels, ...)")
    try:
        config = QuantConfig(bits=bits, **options)
    except (TypeError, ValueError) as exc:
        raise ProqhaError(f"quantize: {exc}") from None
    qmodel = quantize_model(model, config, tuple(example_input.shape[1:]))
    forward_checked(qmodel, example_input, None, "quantize: the model cannot run on example_input {shape}")
    return qmodel


def fit(qmodel: nn.Module, train_loader: Iterable[Batch], test_loader: Iterable[Batch] | None = None, *,
        epochs: int = 1, lr: float | None = None, optimizer: str | torch.optim.Optimizer = "adam",
        weight_decay: float = 0.0, loss: LossFn | None = None, device: str | torch.device | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None, compile: bool = False) -> list[dict[str, Any]]:
    """Train ``qmodel`` (quantization-aware) for ``epochs`` over ``train_loader``; returns one dict per epoch
    (``epoch``, ``lr``, ``train_loss``, ``train_top1``, with ``test_loader`` also ``test_loss``, ``test_top1``,
    ``test_top5``; ``time_s``).

    ``optimizer``: "adam" or "sgd" (momentum 0.9; ``lr`` defaults to 1e-3 and 0.1), with a per-batch cosine
    schedule and no weight decay on biases, BN and quantizer ranges; or your own optimizer, used as it is.
    ``loss(logits, targets)`` defaults to cross-entropy. ``device``: None keeps the model where it is.
    ``compile``: run training and evaluation through ``torch.compile`` (eagerly, with one warning, where it
    cannot compile). On a CPU this sets glibc's allocator to keep freed memory for the rest of the process
    (``proqha.train.local_training_net``: training steps reuse it instead of faulting pages in again).
    """
    from proqha.health import OutputHealth
    from proqha.train import evaluate, local_training_net, make_optimizer, output_warnings, train_one_epoch
    from proqha.train_config import DEFAULT_LR, OPTIMIZERS

    if epochs < 1:
        raise ProqhaError(f"fit: epochs must be >= 1, got {epochs}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ProqhaError(f"fit: lr must be > 0, got {lr}")
    dev = _place(qmodel, device)
    scheduler = None
    if isinstance(optimizer, torch.optim.Optimizer):
        opt = optimizer
    elif optimizer in OPTIMIZERS:
        opt = make_optimizer(qmodel, optimizer, lr if lr is not None else DEFAULT_LR[optimizer], weight_decay)
        steps = len(train_loader) if hasattr(train_loader, "__len__") else 1  # type: ignore[arg-type]
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps))
    else:
        raise ProqhaError(f"fit: optimizer must be one of {', '.join(OPTIMIZERS)} or a torch optimizer, "
                          f"got {optimizer!r}")
    rows = []
    net = local_training_net(qmodel, dev, compile)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch, "lr": opt.param_groups[0]["lr"]}
        row |= train_one_epoch(net, train_loader, opt, scheduler, dev, epoch, loss_fn=loss)
        if test_loader is not None:
            health = OutputHealth()
            row |= evaluate(net, test_loader, dev, loss, health)
            _warn(row, output_warnings(qmodel, health, test_loader, dev), f"epoch {epoch}: ")
        row["time_s"] = time.perf_counter() - t0
        rows.append(row)
        if on_epoch is not None:
            on_epoch(row)
    return rows


def evaluate(qmodel: nn.Module, loader: Iterable[Batch], loss: LossFn | None = None,
             device: str | torch.device | None = None) -> dict[str, float]:
    """``test_loss``, ``test_top1`` and ``test_top5`` (percent) of ``qmodel`` over ``loader``, in eval mode
    (where quantized layers compute as the deployed integer kernels do). A class never predicted while the
    float network predicts it, or logits at their quantizer's limit, are warned about (``warnings``) and
    listed under ``warnings``."""
    from proqha.health import OutputHealth
    from proqha.train import evaluate as run_evaluate
    from proqha.train import output_warnings

    dev, health = _place(qmodel, device), OutputHealth()
    row: dict[str, Any] = dict(run_evaluate(qmodel, loader, dev, loss, health))
    _warn(row, output_warnings(qmodel, health, loader, dev), "")
    return row


def _warn(row: dict[str, Any], lines: list[str], prefix: str) -> None:
    """Each line as a Python warning and under ``row["warnings"]``."""
    for line in lines:
        warnings.warn(prefix + line, stacklevel=3)
        row.setdefault("warnings", []).append(line)


_SEARCH_FIXED = {"source", "device", "workers", "batch_size"}


def _search_config(options: dict[str, Any], has_calib: bool) -> Any:
    """The resolved SearchConfig of ``search_bits``' options; one line for an unknown option or missing data."""
    from proqha.search.progressive import SearchConfig

    names = {f.name for f in fields(SearchConfig)} - _SEARCH_FIXED
    unknown = sorted(set(options) - names)
    if unknown:
        raise ProqhaError(f"search_bits: unknown option {unknown[0]!r}; choose among {', '.join(sorted(names))}")
    cfg = SearchConfig(source="(python api)", **options).resolved()
    if not has_calib and (cfg.criterion in ("acc", "loss") or (cfg.strategy == "allocate" and cfg.table_data == "calib")):
        what = "the budget allocation" if cfg.strategy == "allocate" else f"criterion {cfg.criterion!r}"
        raise ProqhaError(f"search_bits: {what} measures losses on calibration data; pass calib_loader")
    return cfg


def search_bits(qmodel: nn.Module, train_loader: Iterable[Batch], calib_loader: Iterable[Batch] | None = None,
                test_loader: Iterable[Batch] | None = None, *, steps: int = 8, candidates: int = 16,
                lam: float = 0.1, target_cost: float | None = None, loss: LossFn | None = None,
                device: str | torch.device | None = None, run_dir: str | Path | None = None,
                on_step: Callable[[dict[str, Any]], None] | None = None, **options: Any) -> SearchResult:
    """ProQHA's progressive per-layer bit-width search on ``qmodel`` (changed in place).

    Each step scores ways to lower some layers' bits (``strategy`` "table": every knob alone, then the
    ``ratio`` best lowered together; "sets": ``candidates`` random sets, the reference's) by ``criterion``
    ("hessian": one Adam step on a training batch; "loss" / "acc": calibration loss added / error on
    ``calib_loader``; "random"), trading score against progress to the targets (``lam``), fine-tunes
    (``finetune_epochs`` of Adam over ``train_loader``) and evaluates on ``test_loader``. It stops after
    ``steps``, when every target is met (``target_cost``, ``target_bitops`` / ``target_size_mb`` in
    ``options``; a step lowers no more than the targets need), or when no bit can drop. ``options``: the
    other ``proqha.search.SearchConfig`` fields (``ratio``, ``interval``, ``min_bits``, ``knobs``,
    ``fixed_bits``, ``final_epochs``, ``lr``, ``weight_decay``, ``cost_metric``, ``seed``, ...). The same
    seed gives the same search when the loaders yield the same batches under the same global seed.
    ``run_dir``: also write frontier.csv, per-step checkpoints and bits files there (a new folder).
    """
    from proqha.files import atomic_write_json
    from proqha.quant import BitConfig, require_quantized
    from proqha.runs import run_lock
    from proqha.search.data import LoaderData
    from proqha.search.progressive import ProgressiveSearch

    require_quantized(qmodel, "search_bits")
    cfg = _search_config(dict(steps=steps, candidates=candidates, lam=lam, target_cost=target_cost) | options,
                         calib_loader is not None)
    folder = Path(run_dir) if run_dir is not None else None
    if folder is not None and folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ProqhaError(f"search_bits: run_dir {folder} already exists and is not empty")
    dev = _place(qmodel, device)
    first = next(iter(train_loader), None)
    if first is None:
        raise ProqhaError("search_bits: train_loader yields no batches")
    input_size = tuple(first[0].shape[1:])
    search = ProgressiveSearch(cfg, qmodel, LoaderData(train_loader, calib_loader, test_loader), input_size, dev,
                               folder, loss_fn=loss)
    result = SearchResult(qmodel, run_dir=folder)

    def step_done(row: dict[str, Any]) -> None:
        result.steps.append(row | {"bits": BitConfig.from_model(qmodel).to_dict()})
        if on_step is not None:
            on_step(result.steps[-1])

    with run_lock(folder) if folder is not None else contextlib.nullcontext():
        if folder is not None:
            atomic_write_json(folder / "config.json", cfg.to_dict() | {"stage": "search", "source": "python api",
                                                                       "input_size": list(input_size)})
        outcome = search.run(0, on_step=step_done)
    result.stopped = outcome["stopped"]
    return result


def export_onnx(qmodel: nn.Module, path: str | Path, input_size: InputSize,
                parity_data: Iterable[Batch] | None = None, *, profile: str = "ort",
                int8_kernels: str = "portable", weights: str = "packed", check: bool = True,
                reference: bool = True) -> Any:
    """Write ``qmodel`` as a QDQ ONNX graph (dynamic batch) to ``path``, validated first.

    ``input_size``: (C, H, W), or an example batch. Validation runs the ONNX checker, weight-range and
    int16 pair-sum checks, counts the int8 kernels onnxruntime runs, and measures parity with PyTorch
    (onnxruntime and, with ``reference``, the ONNX reference evaluator) on ``parity_data`` (``(x, y)``
    batches; default 64 seeded random inputs, whose accuracy figures mean nothing). ``profile``: "ort"
    (exact, rules enforced) or "trt" (TensorRT's int8-only form, measured only). ``weights``: "packed"
    (2-bit weights as INT2, 3/4-bit as INT4: opset 25/21, the same int8 kernels) or "int8" (opset 19).
    The file's metadata holds its size and its ratio to the fp32 graph's. Returns the
    ``ValidationReport`` (None with ``check=False``); the file (and ``<stem>.parity.json`` beside it) is
    written atomically only when it passes, else ``ExportError`` lists the failures.
    """
    from proqha.export.file_size import add_metadata
    from proqha.export.onnx_export import export_onnx as build_onnx
    from proqha.export.validate import validate_export
    from proqha.files import atomic_write_bytes, atomic_write_json

    size = _size(input_size)
    path = Path(path)
    if path.is_dir():
        raise ProqhaError(f"export_onnx: {path} is a folder")
    proto, info = build_onnx(qmodel, size, profile=profile, int8_kernels=int8_kernels, weights=weights)
    data = add_metadata(proto, qmodel, info, size, {"proqha.source": "python api"})
    report = None
    if check:
        batches = parity_data if parity_data is not None else _random_batches(size, _model_device(qmodel))
        report = validate_export(proto, info, qmodel, batches, reference=reference)
        if not report.ok:
            raise ExportError(f"export_onnx: {len(report.failures)} check(s) failed, nothing written to {path}: "
                              + "; ".join(report.failures), report)
    atomic_write_bytes(path, data)
    if report is not None:
        atomic_write_json(path.with_name(path.stem + ".parity.json"), report.to_dict() | {"model": str(path)})
    return report


def _random_batches(size: tuple[int, ...], device: torch.device, n: int = 64) -> list[Batch]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(n, *size, generator=gen).to(device), torch.zeros(n, dtype=torch.long))]


def bench(model: nn.Module | str | Path, input_size: InputSize, *, batches: Sequence[int] = (1, 8),
          engines: Sequence[str] = ("ort",), test_data: Iterable[Batch] | None = None, warmup: int = 5,
          iters: int = 50, seconds: float | None = None, threads: int | None = None, fp32: bool = True,
          anchor: bool = True, device: str | torch.device | None = None) -> list[dict[str, Any]]:
    """Latency per engine and batch size, next to paper cost, BitOPs, size and top-1; one dict per row.

    ``model``: a quantized model (timed as its exported graph on "ort", eagerly on "torch", as a TensorRT
    engine on "trt"; with ``fp32`` also its float twin, giving ``speedup_vs_fp32``), or the path of an
    ONNX file (timed on "ort" and "openvino" only; latency columns only). With ``fp32`` and ``anchor``,
    onnxruntime's quantize_static of the float twin runs beside them on "ort" and "openvino" (calibrated
    on the first images of ``test_data``; its rows carry ``anchor``, the others ``vs_anchor``). Each
    engine must first agree with PyTorch on a batch of ``test_data`` (or of seeded random inputs, when no
    data is given: then the top-1 columns are None). ``device`` is the torch engine's (default: where the
    model is).
    """
    from proqha.deploy.bench import (
        ANCHOR_CALIBRATION,
        SANITY_BATCH,
        bench_model,
        engine_max_batch,
        fp32_model,
        make_runtime,
        run_bench,
        try_anchor,
    )
    from proqha.deploy.runtime import ONNX_ENGINES, check_engines

    size = _size(input_size)
    batch_list = [int(b) for b in batches]
    check_engines(list(engines), "bench: engines")
    if not batch_list or any(b < 1 for b in batch_list) or iters < 1 or warmup < 0:
        raise ProqhaError(f"bench: need batches >= 1, iters >= 1, warmup >= 0 (got {batch_list}, {iters}, {warmup})")
    if not isinstance(model, nn.Module):
        return _bench_file(Path(model), size, batch_list, list(engines), warmup, iters, seconds, threads)
    torch_device = _place(model, device) if "torch" in engines else None
    models = [bench_model("model", model, size, want_trt="trt" in engines)]
    labelled = test_data is not None
    data = test_data if labelled else _random_batches(size, torch.device("cpu"))
    first = next(iter(data))[0]
    sanity_x = first[:SANITY_BATCH].cpu().numpy()
    if fp32:
        models.append(fp32_model(models[0], size))
        if anchor and any(e in ONNX_ENGINES for e in engines):
            models += try_anchor(models[0], models[1], first[:ANCHOR_CALIBRATION].cpu().numpy(),
                                 lambda line: warnings.warn(line, stacklevel=3))
    result = run_bench(models, list(engines), batch_list,
                       lambda name, bm: make_runtime(name, bm, threads, torch_device, size, engine_max_batch(batch_list)),
                       sanity_x, lambda: data, size, warmup, None if seconds else iters, seconds)
    if not labelled:
        for row in result.rows:
            row["torch_top1"] = row["engine_top1"] = None
    return result.rows


def _bench_file(path: Path, size: tuple[int, ...], batches: list[int], engines: list[str], warmup: int, iters: int,
                seconds: float | None, threads: int | None) -> list[dict[str, Any]]:
    import numpy as np

    from proqha.deploy.bench import graph_runtime
    from proqha.deploy.runtime import ONNX_ENGINES
    from proqha.deploy.latency import measure

    if not set(engines) <= set(ONNX_ENGINES):
        raise ProqhaError(f"bench: an ONNX file runs on {' and '.join(ONNX_ENGINES)} only (pass the model for "
                          "torch or trt)")
    if not path.is_file():
        raise ProqhaError(f"bench: ONNX model not found: {path}")
    graph = path.read_bytes()
    rng = np.random.default_rng(0)
    rows = []
    for engine in engines:
        runtime = graph_runtime(engine, graph, threads)
        for b in batches:
            stats = measure(runtime, rng.standard_normal((b, *size)).astype(np.float32), warmup,
                            None if seconds else iters, seconds)
            rows.append({"model": path.name, "engine": engine, **stats.to_dict()})
    return rows
