"""The API's bench stage: latency per engine and batch next to cost figures."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from proqha.api.common import Batch, InputSize, input_shape, place, random_batches
from proqha.errors import ProqhaError


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

    size = input_shape(input_size)
    batch_list = [int(b) for b in batches]
    check_engines(list(engines), "bench: engines")
    if not batch_list or any(b < 1 for b in batch_list) or iters < 1 or warmup < 0:
        raise ProqhaError(f"bench: need batches >= 1, iters >= 1, warmup >= 0 (got {batch_list}, {iters}, {warmup})")
    if not isinstance(model, nn.Module):
        return _bench_file(Path(model), size, batch_list, list(engines), warmup, iters, seconds, threads)
    torch_device = place(model, device) if "torch" in engines else None
    models = [bench_model("model", model, size, want_trt="trt" in engines)]
    labelled = test_data is not None
    data = test_data if labelled else random_batches(size, torch.device("cpu"))
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
    from proqha.deploy.latency import measure
    from proqha.deploy.runtime import ONNX_ENGINES

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
