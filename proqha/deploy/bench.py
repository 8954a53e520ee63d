"""The bench's models and loops: the graphs a model is timed as (``BenchModel``: the chosen model, its fp32
twin, the quantize_static anchor), the runtimes, and the two loops: every (model, engine, batch) with
sanity, accuracy, size and speed-up (``run_bench``), and latency only for an ONNX file (``time_graph_file``).
``proqha.deploy.bench_run`` calls them for a run folder and for a user's module."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from proqha.cost import CostReport, cost_report
from proqha.deploy.latency import measure
from proqha.deploy.runtime import ONNX_ENGINES, Runtime
from proqha.errors import OptionError, ProqhaError, first_line
from proqha.metrics import Metric, Top1

SANITY_AGREEMENT = 95.0  # % top-1 agreement with PyTorch on the fixed sanity batch
SANITY_BATCH = 64  # images in the sanity batch
ACCURACY_BATCH = 32  # images per batch of the accuracy pass
ANCHOR_CALIBRATION = 64  # training images the quantize_static anchor calibrates on
CSV_FIELDS = ["model", "step", "engine", "batch", "median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "runs",
              "throughput", "speedup_vs_fp32", "vs_anchor", "paper_cost", "gbitops", "bitops_ratio", "size_bytes", "file_bytes",
              "file_ratio_fp32", "ort_session_bytes", "torch_top1", "engine_top1", "sanity_agreement"]


@dataclass
class BenchModel:
    """One model to time: its PyTorch form, its graphs, and its cost figures."""

    label: str
    model: nn.Module
    onnx: bytes
    cost: CostReport
    quantized: bool
    step: int | None = None
    trt_onnx: bytes | None = None
    anchor: bool = False  # not proqha's: onnxruntime's quantize_static, on the ONNX engines only
    openvino_onnx: bytes | None = None  # int8 weight storage where ``onnx`` packs INT4/INT2 (OpenVINO reads int8)

    def runs_on(self, engine: str) -> bool:
        return not self.anchor or engine in ONNX_ENGINES

    def graph(self, engine: str) -> bytes | None:
        """The graph file an engine runs (None for the torch engine, which runs the module)."""
        return {"ort": self.onnx, "openvino": self.openvino_onnx or self.onnx,
                "trt": self.trt_onnx or self.onnx}.get(engine)


def bench_model(label: str, model: nn.Module, input_size: tuple[int, ...], step: int | None = None,
                want_trt: bool = False, int8_kernels: str = "portable", weights: str = "packed",
                metadata: dict[str, str] | None = None) -> BenchModel:
    """A quantized model ready to time: its onnxruntime graph as ``proqha export`` writes it (with
    ``metadata``, where it came from, the file is byte for byte the exported one), the same graph with
    int8 weight storage for OpenVINO where that one packs INT4/INT2 (OpenVINO 2026.4 cannot read INT2 and
    runs a Cast-widened INT4 weight's conv in f32), the trt-profile graph (checked against TensorRT's
    rules) when ``want_trt``, and its cost figures."""
    from proqha.deploy.trt_check import check_trt_graph
    from proqha.export.file_size import add_metadata
    from proqha.export.onnx_export import export_onnx

    proto, info = export_onnx(model, input_size, int8_kernels=int8_kernels, weights=weights)
    data = add_metadata(proto, model, info, input_size, metadata or {})
    trt_bytes = None
    if want_trt:
        trt_proto, trt_info = export_onnx(model, input_size, profile="trt")
        problems = check_trt_graph(trt_proto)
        if problems:
            raise ProqhaError(f"{label}: the trt-profile graph breaks a TensorRT rule: {problems[0]}")
        trt_bytes = add_metadata(trt_proto, model, trt_info, input_size, metadata or {})
    openvino_bytes = None
    if any(v.weight_storage in ("int4", "int2") for v in info.layers.values()):
        ov_proto, ov_info = export_onnx(model, input_size, int8_kernels=int8_kernels, weights="int8")
        openvino_bytes = add_metadata(ov_proto, model, ov_info, input_size, metadata or {})
    return BenchModel(label, model, data, cost_report(model, input_size), True, step, trt_bytes,
                      openvino_onnx=openvino_bytes)


FP32_LABEL = "fp32 twin"
FP32_NOTE = ("fp32 twin: the model with every quantizer off, exported in float: the latency and size baseline. It is "
             "not the trained function (that is the quantized one), so its accuracy can be far lower.")


def fp32_model(base: BenchModel, input_size: tuple[int, ...], metadata: dict[str, str] | None = None) -> BenchModel:
    """The fp32 twin of a quantized bench model (every quantizer off): the speed-up baseline, as
    the onnx-fp32 export writes it."""
    from proqha.export.file_size import add_metadata
    from proqha.export.onnx_export import export_onnx
    from proqha.quant import float_twin

    twin = float_twin(base.model)
    proto, info = export_onnx(twin, input_size, quantized=False)
    data = add_metadata(proto, twin, info, input_size, metadata or {}, "onnx-fp32")
    return BenchModel(FP32_LABEL, twin, data, cost_report(twin, input_size), False, base.step, data)


def anchor_model(base: BenchModel, fp32: BenchModel, calibration: np.ndarray) -> BenchModel:
    """onnxruntime's ``quantize_static`` of the fp32 twin's graph (``proqha.deploy.ort_anchor``), calibrated on
    ``calibration``; compared with the fp32 twin in PyTorch, costed as every conv/linear at 8 bit."""
    import copy

    from proqha.deploy.ort_anchor import ANCHOR_LABEL, quantize_static_graph
    from proqha.quant import quant_layers, set_uniform_bits

    uniform = copy.deepcopy(base.model)
    set_uniform_bits(uniform, 8, quant_layers(uniform))
    input_size = tuple(calibration.shape[1:])
    try:
        graph = quantize_static_graph(fp32.onnx, calibration)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's quantizer raises many types on graphs it cannot take
        raise ProqhaError(f"onnxruntime's quantize_static cannot quantize this model ({type(exc).__name__}: "
                          f"{first_line(exc)})") from None
    return BenchModel(ANCHOR_LABEL, fp32.model, graph, cost_report(uniform, input_size), True, None, anchor=True)


def try_anchor(base: BenchModel, fp32: BenchModel, calibration: np.ndarray,
               warn: Callable[[str], None]) -> list[BenchModel]:
    """``[anchor_model(...)]``, or ``[]`` with one ``warn`` line where quantize_static fails: the anchor is a
    reference, never a reason to lose the rows it would stand beside."""
    from proqha.deploy.ort_anchor import ANCHOR_LABEL

    try:
        return [anchor_model(base, fp32, calibration)]
    except ProqhaError as exc:
        warn(f"warning: no {ANCHOR_LABEL} row: {exc}")
        return []


def with_baselines(chosen: BenchModel, input_size: tuple[int, ...], engines: Sequence[str],
                   calibration: Callable[[], np.ndarray], warn: Callable[[str], None], *, fp32: bool = True,
                   anchor: bool = True, metadata: dict[str, str] | None = None,
                   note: Callable[[str], None] | None = None) -> list[BenchModel]:
    """``chosen``, then (with ``fp32``) its fp32 twin and, with ``anchor`` where an ONNX engine runs,
    onnxruntime's quantize_static of the twin calibrated on ``calibration()`` (announced by ``note``; a
    failure is one ``warn`` line and no anchor row)."""
    models = [chosen]
    if not fp32:
        return models
    models.append(fp32_model(chosen, input_size, metadata))
    if anchor and any(e in ONNX_ENGINES for e in engines):
        if note is not None:
            note("quantizing the fp32 twin with onnxruntime's quantize_static (the anchor row)")
        models += try_anchor(chosen, models[1], calibration(), warn)
    return models


def check_timing(batches: Sequence[int], warmup: int, iters: int, seconds: float | None = None,
                 threads: int | None = None, samples: int = 1) -> list[int]:
    """The batch sizes as a list once every timing option is in range, else an OptionError naming the first
    that is not."""
    batch_list = [int(b) for b in batches]
    for option, value, ok in (("batches", batch_list, bool(batch_list) and min(batch_list) >= 1),
                              ("warmup", warmup, warmup >= 0), ("iters", iters, iters >= 1),
                              ("seconds", seconds, seconds is None or seconds > 0),
                              ("threads", threads, threads is None or threads >= 1),
                              ("samples", samples, samples >= 1)):
        if not ok:
            raise OptionError(option, f"out of range: {value}")
    return batch_list


def engine_max_batch(batches: Iterable[int]) -> int:
    """The largest batch a bench sends an engine: its timed batches, the sanity batch and the accuracy
    batches (a TensorRT profile must take each; larger inputs run in parts)."""
    return max([*batches, SANITY_BATCH, ACCURACY_BATCH])


def graph_runtime(engine: str, graph: bytes, threads: int | None = None) -> Runtime:
    """The runtime of an engine that reads an ONNX file as it is (ort, openvino: ``ONNX_ENGINES``)."""
    if engine == "ort":
        from proqha.deploy.runtime_ort import OrtRuntime

        return OrtRuntime(graph, threads)
    from proqha.deploy.runtime_openvino import OpenVinoRuntime

    return OpenVinoRuntime(graph, threads)


def make_runtime(engine: str, bm: BenchModel, threads: int | None = None, device: torch.device | None = None,
                 input_size: tuple[int, ...] | None = None, max_batch: int = 1) -> Runtime:
    """The runtime ``engine`` (ort, openvino, torch or trt) over one bench model; ``max_batch``
    (``engine_max_batch``) is the top of a TensorRT engine's profile."""
    if engine in ONNX_ENGINES:
        return graph_runtime(engine, bm.graph(engine), threads)  # type: ignore[arg-type]
    if engine == "torch":
        from proqha.deploy.runtime_torch import TorchRuntime

        return TorchRuntime(bm.model, device or torch.device("cpu"))
    from proqha.deploy.runtime_trt import TrtRuntime, build_engine

    engine_bytes, _ = build_engine(bm.trt_onnx or bm.onnx, input_size, max_batch=max_batch)
    return TrtRuntime(engine_bytes)


def sanity(runtime: Runtime, model: nn.Module, x: np.ndarray, enforce: bool = True) -> float:
    """Top-1 agreement (%) of a runtime with the PyTorch model on a fixed batch; ProqhaError below the bar
    (with ``enforce``)."""
    with torch.no_grad():
        device = next(model.parameters()).device
        ref = model.eval()(torch.from_numpy(x).to(device)).cpu().numpy()
    out = runtime.run(x)
    agreement = 100.0 * float((out.argmax(1) == ref.argmax(1)).mean())
    if enforce and agreement < SANITY_AGREEMENT:
        raise ProqhaError(f"{runtime.name}: output disagrees with PyTorch on the sanity batch "
                          f"({agreement:.1f}% top-1 agreement < {SANITY_AGREEMENT}%); not timing it")
    return agreement


def accuracy(run: Callable[[np.ndarray], np.ndarray], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             metric: Metric | None = None) -> tuple[float, float | None]:
    """Top-1 (%) of ``run`` over streamed test batches (per labelled pixel for a dense prediction), and
    ``metric``'s value over the same outputs (None without one)."""
    top1, extra = Top1(), [metric] if metric is not None else []
    for m in extra:
        m.reset()  # a metric object may be passed again (the next engine)
    for x, y in batches:
        out = torch.from_numpy(np.asarray(run(x.numpy().astype(np.float32))))
        for m in (top1, *extra):
            m.update(out, y)
    return top1.value(), None if metric is None else metric.value()


@dataclass
class BenchResult:
    """Rows (one per model, engine and batch) and what each engine ran on."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    devices: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": 1, "settings": self.settings, "devices": self.devices, "rows": self.rows}


def run_bench(models: list[BenchModel], engines: list[str], batches: list[int],
              make_runtime: Callable[[str, BenchModel], Runtime], sanity_batch: np.ndarray,
              test_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], input_size: tuple[int, ...],
              warmup: int = 5, iters: int | None = 50, seconds: float | None = None,
              on_progress: Callable[[str], None] | None = None, metric: Metric | None = None) -> BenchResult:
    """Sanity-check, measure accuracy (top-1, and ``metric`` where given: its name in ``metric``, its
    values in ``torch_metric`` and ``engine_metric``) and time every (model, engine, batch); each row also
    carries the size of the graph file the engine runs, its ratio to the fp32 graph's, and onnxruntime's
    memory for the session (``ort_session_memory``, ort rows)."""
    from proqha.deploy.memory import ort_session_memory

    result = BenchResult(settings={"engines": engines, "batches": batches, "warmup": warmup, "iters": iters,
                                   "seconds": seconds, "input_size": list(input_size)})
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, *input_size)).astype(np.float32) for b in batches}
    for bm in models:
        torch_top1, torch_metric = accuracy(lambda x: _torch_run(bm.model, x), test_batches(), metric)
        session_bytes = ort_session_memory(bm.onnx) if "ort" in engines else None
        for engine in engines:
            if not bm.runs_on(engine):
                continue
            if on_progress is not None:
                on_progress(f"{bm.label} on {engine}")
            runtime = make_runtime(engine, bm)
            result.devices.setdefault(engine, runtime.describe())
            agreement = sanity(runtime, bm.model, sanity_batch, enforce=not bm.anchor)
            engine_top1, engine_metric = accuracy(runtime.run, test_batches(), metric)
            for b in batches:
                stats = measure(runtime, inputs[b], warmup, iters, seconds)
                result.rows.append({
                    "model": bm.label, "step": bm.step, "engine": engine, **stats.to_dict(),
                    "paper_cost": bm.cost.paper_cost, "gbitops": bm.cost.bitops / 1e9,
                    "bitops_ratio": bm.cost.bitops_ratio, "size_bytes": bm.cost.size_bytes,
                    "file_bytes": None if bm.graph(engine) is None else len(bm.graph(engine)),
                    "ort_session_bytes": session_bytes if engine == "ort" else None,
                    "torch_top1": torch_top1, "engine_top1": engine_top1, "sanity_agreement": agreement,
                    "quantized": bm.quantized, "anchor": bm.anchor}
                    | ({"metric": metric.name, "torch_metric": torch_metric, "engine_metric": engine_metric}
                       if metric is not None else {}))
    _speedups(result.rows)
    return result


def time_graph_file(path: Path, input_size: tuple[int, ...], engines: Sequence[str], batches: Sequence[int],
                    warmup: int = 5, iters: int | None = 50, seconds: float | None = None,
                    threads: int | None = None) -> list[dict[str, Any]]:
    """Latency rows of an ONNX file on each engine that reads it as it is and each batch size, on seeded
    random inputs (no accuracy: a file carries no model to compare with)."""
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
            stats = measure(runtime, rng.standard_normal((b, *input_size)).astype(np.float32), warmup, iters, seconds)
            rows.append({"model": path.name, "engine": engine, **stats.to_dict()})
    return rows


def _torch_run(model: nn.Module, x: np.ndarray) -> np.ndarray:
    device = next(model.parameters()).device
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x).to(device)).cpu().numpy()


def _speedups(rows: list[dict[str, Any]]) -> None:
    """Speed-up and file size against the fp32 row of the same engine and batch (the first float model), and
    latency as a ratio to the quantize_static anchor's row there (``vs_anchor``, where it ran)."""
    base = {(r["engine"], r["batch"]): r for r in reversed(rows) if not r["quantized"]}
    anchors = {(r["engine"], r["batch"]): r for r in rows if r.get("anchor")}
    for r in rows:
        ref = base.get((r["engine"], r["batch"]))
        anchor = anchors.get((r["engine"], r["batch"]))
        r["vs_anchor"] = r["median_ms"] / anchor["median_ms"] if anchor and anchor["median_ms"] > 0 else None
        r["speedup_vs_fp32"] = ref["median_ms"] / r["median_ms"] if ref and r["median_ms"] > 0 else None
        r["file_ratio_fp32"] = r["file_bytes"] / ref["file_bytes"] if ref and ref["file_bytes"] and \
            r["file_bytes"] is not None else None
