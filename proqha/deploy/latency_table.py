"""A search's latency measurements on a CPU engine (``proqha.latency_model.LatencyMeasurer``): the per-layer
table, measured once per (model, engine, CPU, batch) and cached in the run, and any one whole graph.

The table: the start graph (the file ``proqha export`` writes at the start bits) is timed, then, per
searchable layer and per format that layer can take (``FORMAT_BITS``: float, int8 kernels with 8-, 4- or
2-bit stored weights, a clamped input or not), the graph with only that layer moved; the layer's delta is
the moved graph's median less the start graph's median timed just before it (drift between layers stays out
of the deltas). ``graph_ms`` times one graph the same way, so a prediction and a measurement are comparable."""

from __future__ import annotations

import copy
import hashlib
import json
import platform
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from proqha.deploy.latency import least_block_medians
from proqha.files import atomic_write_text
from proqha.latency_model import FORMAT_BITS, LatencyModel, layer_format

Progress = Callable[[int, int], None]  # (graphs timed, graphs in all)


def cpu_name() -> str:
    """The CPU's model name (x86 ``model name``), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("model name")), "")
        if line:
            return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class EngineLatency:
    """Latency of exported graphs on ``engine`` ("ort" or "openvino") at ``batch``, ``threads`` (None: the
    engine's default), each graph timed as ``warmup`` calls, then ``repeats`` blocks of ``seconds`` of calls
    (at least ``iters`` each), the least block median kept (a block that another process's threads, or
    torch's still spinning pool, slowed down does not count).
    ``cache``: the JSON file the table is kept in and read back from where its key matches."""

    def __init__(self, engine: str = "ort", batch: int = 1, cache: Path | None = None, threads: int | None = None,
                 warmup: int = 10, iters: int = 20, seconds: float = 0.15, repeats: int = 3,
                 on_progress: Progress | None = None) -> None:
        self.engine, self.batch, self.cache, self.threads = engine, batch, cache, threads
        self.warmup, self.iters, self.seconds, self.repeats = warmup, iters, seconds, repeats
        self.on_progress = on_progress
        self._reference: tuple[nn.Module, bytes] | None = None  # graph_ms_beside's reference and its graph

    def key(self, model: nn.Module, input_size: tuple[int, ...]) -> dict[str, Any]:
        """What a table holds for: engine, batch, threads, CPU, input size and the model (its bits and a digest
        of its parameters and buffers)."""
        from proqha.quant import BitConfig

        digest = hashlib.sha256()
        for name, value in sorted(model.state_dict().items()):
            digest.update(name.encode())
            if isinstance(value, torch.Tensor):
                digest.update(value.detach().cpu().float().contiguous().numpy().tobytes())
            else:
                digest.update(repr(value).encode())
        return json.loads(json.dumps({"engine": self.engine, "batch": self.batch, "threads": self.threads,
                                      "cpu": cpu_name(), "input_size": list(input_size),
                                      "bits": BitConfig.from_model(model).to_dict(),
                                      "model": digest.hexdigest()[:16]}))  # as a cached table reads it back

    def graph_ms(self, model: nn.Module, input_size: tuple[int, ...]) -> float:
        """The median latency (ms) of ``model``'s exported graph at its bits."""
        return self.time_graph(self.graph_of(model, input_size), input_size)

    def graph_ms_beside(self, model: nn.Module, reference: nn.Module, input_size: tuple[int, ...]
                        ) -> tuple[float, float]:
        """The median latency (ms) of ``model``'s and ``reference``'s exported graphs at their bits, timed
        interleaved (``time_graphs``): their ratio holds through a drift of the machine. The reference's graph
        is exported once per reference model."""
        if self._reference is None or self._reference[0] is not reference:
            self._reference = (reference, self.graph_of(reference, input_size))
        ms, ref = self.time_graphs([self.graph_of(model, input_size), self._reference[1]], input_size)
        return ms, ref

    def fp32_ms(self, model: nn.Module, input_size: tuple[int, ...]) -> float:
        """The median latency (ms) of ``model``'s float graph (``fp32_graph_of``): the top of a useful budget."""
        return self.time_graph(self.fp32_graph_of(model, input_size), input_size)

    def graph_of(self, model: nn.Module, input_size: tuple[int, ...]) -> bytes:
        """``model``'s exported graph at its bits (the model is untouched)."""
        return self._graph(copy.deepcopy(model).cpu().eval(), input_size)

    @staticmethod
    def fp32_graph_of(model: nn.Module, input_size: tuple[int, ...]) -> bytes:
        """``model``'s float graph: every quantizer off, ``proqha export`` format onnx-fp32."""
        from proqha.export.onnx_export import export_onnx
        from proqha.quant import float_twin

        twin = float_twin(model).cpu()  # a copy
        return export_onnx(twin, tuple(input_size), quantized=False)[0].SerializeToString()

    def table(self, model: nn.Module, input_size: tuple[int, ...]) -> LatencyModel:
        """The per-layer table of ``model`` at its bits (read from ``cache`` when its key matches, else
        measured and written there). The model is untouched (a CPU copy is moved)."""
        from proqha.quant import BitConfig, searchable_layers

        size = tuple(input_size)
        key = self.key(model, size)
        if self.cache is not None and self.cache.is_file():
            try:
                kept = LatencyModel.from_dict(json.loads(self.cache.read_text()))
                if kept.key == key:
                    return kept
            except (ValueError, KeyError, TypeError):
                pass  # an unreadable table is measured again
        probe = copy.deepcopy(model).cpu().eval()
        start = BitConfig.from_model(probe).to_dict()
        names = [n for n in searchable_layers(probe) if n in start]
        formats = {n: layer_format(start[n]["w"], start[n]["a"]) for n in names}
        jobs = len(names) * len(FORMAT_BITS)  # per layer: the start graph, then each other format
        start_graph = self._graph(probe, size)
        done, bases, deltas = 0, [], {}
        for name in names:
            base = self.time_graph(start_graph, size)
            bases.append(base)
            deltas[name] = {}
            done += 1
            if self.on_progress is not None:
                self.on_progress(done, jobs)
            for fmt, (w, a) in FORMAT_BITS.items():
                if fmt == formats[name]:
                    continue
                BitConfig(start | {name: {"w": w, "a": a}}).apply(probe)
                try:
                    deltas[name][fmt] = self.time_graph(self._graph(probe, size), size) - base
                finally:
                    BitConfig(start).apply(probe)
                done += 1
                if self.on_progress is not None:
                    self.on_progress(done, jobs)
        table = LatencyModel(self.engine, self.batch, key["cpu"], float(np.median(bases)) if bases else 0.0, formats,
                             deltas, key)
        if self.cache is not None:
            atomic_write_text(self.cache, json.dumps(table.to_dict(), indent=1) + "\n")
        return table

    def _graph(self, probe: nn.Module, input_size: tuple[int, ...]) -> bytes:
        """The exported graph of ``probe`` (a CPU model in eval mode, which the export leaves as it is), with the
        weight storage this engine reads: packed INT4/INT2 on onnxruntime, int8 on OpenVINO (which reads no
        INT2; ``proqha bench`` gives it the same int8 file)."""
        from proqha.export.onnx_export import export_onnx

        weights = "int8" if self.engine == "openvino" else "packed"
        return export_onnx(probe, input_size, weights=weights)[0].SerializeToString()

    def time_graph(self, graph: bytes, input_size: tuple[int, ...]) -> float:
        """The median latency (ms) of one ONNX graph (its bytes) on this engine at this batch."""
        return self.time_graphs([graph], input_size)[0]

    def time_graphs(self, graphs: list[bytes], input_size: tuple[int, ...], repeats: int | None = None) -> list[float]:
        """Each graph's least block median (ms), the graphs timed interleaved in the same ``repeats`` blocks
        (None: this measurer's), so a drift of the machine moves every figure alike."""
        from proqha.deploy.bench import graph_runtime

        runtimes = [graph_runtime(self.engine, graph, self.threads) for graph in graphs]
        x = np.random.default_rng(0).random((self.batch, *input_size), dtype=np.float32)
        return least_block_medians(runtimes, x, repeats or self.repeats, self.warmup, iters=self.iters,
                                   seconds=self.seconds)


def search_latency(cfg: Any, run_dir: Path | None, on_progress: Progress | None = None) -> EngineLatency | None:
    """The latency measurer of a search (``proqha.search.SearchConfig``) that needs one, its table cached in
    ``run_dir`` (``RunDir.latency_table``; None: not cached); None for any other search."""
    if not cfg.needs_latency:
        return None
    from proqha.deploy.runtime import check_engines
    from proqha.runs import RunDir

    check_engines([cfg.latency_engine], "latency_engine")
    return EngineLatency(cfg.latency_engine, cfg.latency_batch, RunDir(run_dir).latency_table if run_dir else None,
                         on_progress=on_progress)
