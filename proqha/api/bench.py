"""The API's bench stage: latency per engine and batch next to cost figures (``proqha.deploy.bench_run``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from proqha.api.common import Batch, InputSize, input_shape, place, random_batches
from proqha.deploy.bench_config import API_BENCH_BATCHES
from proqha.deploy.bench_config import BenchOptions as B
from proqha.metrics import Metric, metric_of
from proqha.options import default


def bench(model: nn.Module | str | Path, input_size: InputSize, *, batches: Sequence[int] = API_BENCH_BATCHES,
          engines: Sequence[str] = default(B, "engines"), test_data: Iterable[Batch] | None = None,
          warmup: int = default(B, "warmup"), iters: int = default(B, "iters"), seconds: float | None = None,
          threads: int | None = None, fp32: bool = True, anchor: bool = default(B, "anchor"),
          device: str | torch.device | None = None, metric: str | Metric | None = None) -> list[dict[str, Any]]:
    """Latency per engine and batch size, next to paper cost, BitOPs, size and top-1; one dict per row.

    ``model``: a quantized model (timed as its exported graph on "ort", eagerly on "torch", as a TensorRT
    engine on "trt"; with ``fp32`` also its float twin, giving ``speedup_vs_fp32``), or the path of an
    ONNX file (timed on "ort" and "openvino" only; latency columns only). With ``fp32`` and ``anchor``,
    onnxruntime's quantize_static of the float twin runs beside them on "ort" and "openvino" (calibrated
    on the first images of ``test_data``; its rows carry ``anchor``, the others ``vs_anchor``). Each
    engine must first agree with PyTorch on a batch of ``test_data`` (or of seeded random inputs, when no
    data is given: then the top-1 columns are None). ``device`` is the torch engine's (default: where the
    model is). ``metric`` ("miou", "pixel_accuracy", "top1" or a ``proqha.metrics.Metric``) adds its value
    over ``test_data`` per row beside top-1: ``metric``, ``torch_metric``, ``engine_metric``.
    """
    from proqha.deploy.bench import check_timing, time_graph_file
    from proqha.deploy.bench_run import bench_module
    from proqha.deploy.runtime import check_engines

    size = input_shape(input_size)
    chosen_metric = metric_of(metric)
    check_engines(list(engines), "engines")
    batch_list = check_timing(batches, warmup, iters, seconds, threads)
    if not isinstance(model, nn.Module):
        return time_graph_file(Path(model), size, list(engines), batch_list, warmup, None if seconds else iters,
                               seconds, threads)
    torch_device = place(model, device) if "torch" in engines else None
    data = test_data if test_data is not None else random_batches(size, torch.device("cpu"))
    return bench_module(model, size, data, labelled=test_data is not None, engines=engines, batches=batch_list,
                        warmup=warmup, iters=iters, seconds=seconds, threads=threads, fp32=fp32, anchor=anchor,
                        torch_device=torch_device, metric=chosen_metric)
