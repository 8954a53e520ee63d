"""The API's search stage: ProQHA's progressive bit-width search on a quantized model, on the same library
calls and run-folder files as ``proqha search`` (``ProgressiveSearch.run_in_folder``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from proqha.api.common import Batch, place
from proqha.errors import ProqhaError
from proqha.metrics import Metric, metric_of
from proqha.options import default
from proqha.search.config import SearchConfig
from proqha.train import LossFn


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


# Options the API does not take: the caller's model and loaders are the source, the batch size and workers
# are the loaders', and ``device`` is an argument of its own (a torch.device too).
_SEARCH_FIXED = {"source", "device", "workers", "batch_size"}
API_SOURCE = "python api"  # config.json's "source" of a search of the caller's own model


def _search_config(options: dict[str, Any], has_calib: bool) -> SearchConfig:
    """The resolved SearchConfig of ``search_bits``' options; one line for an unknown option or missing data."""
    from proqha.search.strategies import calibration_user

    names = {f.name for f in fields(SearchConfig)} - _SEARCH_FIXED
    unknown = sorted(set(options) - names)
    if unknown:
        raise ProqhaError(f"search_bits: unknown option {unknown[0]!r}; choose among {', '.join(sorted(names))}")
    cfg = SearchConfig(source=API_SOURCE, **options).resolved()
    what = calibration_user(cfg)
    if not has_calib and what is not None:
        raise ProqhaError(f"search_bits: {what} measures losses on calibration data; pass calib_loader")
    return cfg


def search_bits(qmodel: nn.Module, train_loader: Iterable[Batch], calib_loader: Iterable[Batch] | None = None,
                test_loader: Iterable[Batch] | None = None, *, steps: int = default(SearchConfig, "steps"),
                candidates: int = default(SearchConfig, "candidates"), lam: float = default(SearchConfig, "lam"),
                target_cost: float | None = default(SearchConfig, "target_cost"), loss: LossFn | None = None,
                metric: str | Metric | None = None,
                device: str | torch.device | None = None, run_dir: str | Path | None = None,
                on_step: Callable[[dict[str, Any]], None] | None = None, **options: Any) -> SearchResult:
    """ProQHA's progressive per-layer bit-width search on ``qmodel`` (changed in place).

    Each step scores ways to lower some layers' bits (``strategy`` "table": every knob alone, then the
    ``ratio`` best lowered together; "sets": ``candidates`` random sets, the reference's; "allocate", the
    default with a cost or BitOPs target: a knapsack on each knob's calibration loss) by ``criterion``
    ("hessian": one Adam step on a training batch; "loss" / "acc": calibration loss added / error on
    ``calib_loader``; "random"), trading score against progress to the targets (``lam``), fine-tunes
    (``finetune_epochs`` of Adam over ``train_loader``) and evaluates on ``test_loader``. It stops after
    ``steps``, when every target is met (``target_cost``, ``target_bitops`` / ``target_size_mb`` / ``target_file_kb``
    in ``options``; a step lowers no more than the targets need), or when no bit can drop. ``options``: the
    other ``proqha.search.SearchConfig`` fields (``ratio``, ``interval``, ``min_bits``, ``knobs``,
    ``fixed_bits``, ``final_epochs``, ``lr``, ``weight_decay``, ``cost_metric``, ``seed``, ...). The same
    seed gives the same search when the loaders yield the same batches under the same global seed (a training
    DataLoader's own ``generator`` is reseeded from the search's seeds, so its shuffles repeat too).
    ``run_dir``: also write the files ``proqha search`` writes there (config.json, frontier.csv, per-step
    checkpoints and bits files; a new folder). ``loss`` and ``metric`` as in ``fit``: with a metric (mean IoU for
    segmentation) the final race ranks by it and every step records it as ``test_metric``. Defaults are
    ``SearchConfig``'s.
    """
    import contextlib

    from proqha.quant import BitConfig, require_quantized
    from proqha.runs import RunDir, removed_on_error
    from proqha.search.data import LoaderData
    from proqha.search.progressive import ProgressiveSearch

    require_quantized(qmodel, "search_bits")
    cfg = _search_config(dict(steps=steps, candidates=candidates, lam=lam, target_cost=target_cost) | options,
                         calib_loader is not None)
    folder = Path(run_dir) if run_dir is not None else None
    if folder is not None and folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ProqhaError(f"search_bits: run_dir {folder} already exists and is not empty")
    dev = place(qmodel, device)
    first = next(iter(train_loader), None)
    if first is None:
        raise ProqhaError("search_bits: train_loader yields no batches")
    input_size = tuple(first[0].shape[1:])
    measure = None
    if cfg.needs_file:  # a file target: the exported file of the model as it starts, predicted from there
        from proqha.export.file_size import measure_file_model as measure
    latency = None
    if cfg.needs_latency:  # a latency budget: a per-layer table timed on the engine, cached in run_dir
        from proqha.deploy.latency_table import search_latency

        latency = search_latency(cfg, folder)
    with (removed_on_error(folder, RunDir(folder).step_checkpoint(0), made_here=not folder.exists())
          if folder is not None else contextlib.nullcontext()):  # a refused start leaves no latency table behind
        search = ProgressiveSearch(cfg, qmodel, LoaderData(train_loader, calib_loader, test_loader), input_size, dev,
                                   folder, loss_fn=loss, measure_file=measure, measure_latency=latency,
                                   metric=metric_of(metric))
    result = SearchResult(qmodel, run_dir=folder)

    def step_done(row: dict[str, Any]) -> None:
        result.steps.append(row | {"bits": BitConfig.from_model(qmodel).to_dict()})
        if on_step is not None:
            on_step(result.steps[-1])

    outcome = search.run_in_folder(on_step=step_done)
    result.stopped = outcome["stopped"]
    return result
