"""Bench a stage's output: ``bench_run`` times a run folder's models (the chosen step, its fp32 twin, the
uniform 8-bit start step, onnxruntime's quantize_static anchor) and writes bench.json, bench.csv and the
plots; ``bench_module`` times a user's quantized module. ``proqha bench``, the pipeline and ``proqha.bench``
call them; the loops themselves are ``proqha.deploy.bench``'s."""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from proqha.checkpoint import Checkpoint
from proqha.data import checkpoint_calibration_images, checkpoint_test_loader
from proqha.deploy.bench import (
    ACCURACY_BATCH,
    ANCHOR_CALIBRATION,
    CSV_FIELDS,
    SANITY_BATCH,
    BenchModel,
    BenchResult,
    bench_model,
    check_timing,
    engine_max_batch,
    make_runtime,
    run_bench,
    with_baselines,
)
from proqha.deploy.bench_config import BenchOptions as B
from proqha.deploy.runtime import Runtime, check_engines
from proqha.devices import resolve_device
from proqha.errors import OptionError
from proqha.export.file_size import source_metadata
from proqha.export.onnx_export import check_int8_kernels, check_weights
from proqha.files import atomic_write_json, atomic_write_text, check_writable
from proqha.metrics import Metric
from proqha.options import default
from proqha.recipe import load_model
from proqha.runs import Picked, RunDir, pick_checkpoint

Note = Callable[[str], None]  # one line of progress or warning for the user


@dataclass
class RunBench:
    """What ``bench_run`` measured and wrote: the rows (``result``), the run and output folders, the files
    written, and the settings a report of the rows names."""

    result: BenchResult
    run_dir: Path
    out_dir: Path
    written: list[Path] = field(default_factory=list)
    samples: int = 256
    int8_kernels: str = "portable"
    weights: str = "packed"

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.result.rows


def bench_run(run: Path | None = None, *, step: int | None = None, best_under_cost: float | None = None,
              all_steps: bool = default(B, "all_steps"), engines: Sequence[str] = default(B, "engines"),
              batches: Sequence[int] = default(B, "batches"), warmup: int = default(B, "warmup"),
              iters: int = default(B, "iters"), seconds: float | None = None, threads: int | None = None,
              samples: int = default(B, "samples"), anchor: bool = default(B, "anchor"),
              device: str = default(B, "device"), out_dir: Path | None = None, plot: bool = default(B, "plot"),
              int8_kernels: str = default(B, "int8_kernels"), weights: str = default(B, "weights"),
              on_note: Note | None = None) -> RunBench:
    """Time a run's models on each engine and batch size and write ``bench.json``/``bench.csv`` (and, with
    ``plot``, latency_vs_bitops.png and accuracy_vs_latency.png) into ``out_dir`` (default RUN/bench).

    ``run``: a search, train or quantize run or a checkpoint (default: the latest search run, else the newest
    train or quantize run), its
    step chosen by ``step`` or ``best_under_cost`` (``runs.pick_checkpoint``). Timed: that model, its fp32
    twin, the search's uniform 8-bit start step (every step with ``all_steps``), and with ``anchor``
    onnxruntime's quantize_static of the twin on the ONNX engines. ``iters`` timed runs per batch size after
    ``warmup``, or ``seconds`` of runs; ``threads``: onnxruntime's intra-op threads; ``samples``: test images
    per accuracy figure; ``device``: the torch engine's; ``int8_kernels``/``weights``: the onnxruntime
    graph's form, as ``proqha export`` writes it. Every option is checked before any work (an OptionError
    names it). ``on_note`` receives each line of progress and each warning.
    """
    note = on_note or (lambda line: None)
    engines = check_engines(list(engines), "engines")
    batches = check_timing(batches, warmup, iters, seconds, threads, samples)
    check_int8_kernels(int8_kernels)
    check_weights(weights)
    torch_device = resolve_device(device) if "torch" in engines else None
    picked = pick_checkpoint(run, step, best_under_cost)
    if all_steps and picked.step is None:
        raise OptionError("all_steps", f"times every step of a search run; {run or picked.run_dir} is not one")
    out_dir = Path(out_dir) if out_dir is not None else RunDir(picked.run_dir).bench
    check_writable(out_dir, "out_dir", folder=True)
    models, state = _run_models(picked, engines, all_steps, anchor, int8_kernels, weights, note)
    size = state.input_size

    def runtime(name: str, bm: BenchModel) -> Runtime:
        return make_runtime(name, bm, threads, torch_device, size, engine_max_batch(batches))

    sanity_x = next(iter(checkpoint_test_loader(state, SANITY_BATCH, SANITY_BATCH)))[0].numpy()
    samples = len(checkpoint_test_loader(state, samples, ACCURACY_BATCH).dataset)  # type: ignore[arg-type]  # what is used
    result = run_bench(models, engines, batches, runtime, sanity_x,
                       lambda: checkpoint_test_loader(state, samples, ACCURACY_BATCH),
                       size, warmup, None if seconds else iters, seconds,
                       on_progress=lambda what: note(f"timing {what}"))
    written = write_results(result, out_dir)
    if plot:
        written += plot_results(result, out_dir, str(picked.run_dir))
    return RunBench(result, picked.run_dir, out_dir, written, samples, int8_kernels, weights)


def _run_models(picked: Picked, engines: list[str], all_steps: bool, anchor: bool, int8_kernels: str, weights: str,
                note: Note) -> tuple[list[BenchModel], Checkpoint]:
    """The chosen model with its fp32 twin and anchor, then the search's start step (or every step), and
    the chosen checkpoint."""
    want_trt = "trt" in engines
    label = f"step {picked.step}" if picked.step is not None else "model"
    chosen, state = _checkpoint_model(label, picked.checkpoint, picked.step, want_trt, int8_kernels, weights)
    models = with_baselines(chosen, state.input_size, engines,
                            lambda: checkpoint_calibration_images(state, ANCHOR_CALIBRATION).numpy(), note,
                            anchor=anchor, metadata=source_metadata(state, picked.checkpoint, picked.step), note=note)
    if picked.step is not None:
        steps = RunDir(picked.run_dir).step_checkpoints()
        for s, path in steps if all_steps else steps[:1]:
            if s != picked.step:
                label = "step 0 (uniform 8)" if s == 0 else f"step {s}"
                models.append(_checkpoint_model(label, path, s, want_trt, int8_kernels, weights)[0])
    return models, state


def _checkpoint_model(label: str, checkpoint: Path, step: int | None, want_trt: bool, int8_kernels: str,
                      weights: str) -> tuple[BenchModel, Checkpoint]:
    """A checkpoint's model ready to time, its graphs byte for byte the exported files."""
    model, state = load_model(checkpoint)
    return bench_model(label, model, state.input_size, step, want_trt, int8_kernels, weights,
                       source_metadata(state, checkpoint, step)), state


def bench_module(model: nn.Module, input_size: tuple[int, ...], data: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 *, labelled: bool = True, engines: Sequence[str] = ("ort",), batches: Sequence[int] = (1, 8),
                 warmup: int = 5, iters: int = 50, seconds: float | None = None, threads: int | None = None,
                 fp32: bool = True, anchor: bool = True, torch_device: torch.device | None = None,
                 warn: Note | None = None, metric: Metric | None = None) -> list[dict[str, Any]]:
    """Rows of a quantized module (labelled "model"), with its fp32 twin and anchor as ``bench_run`` times
    them; the sanity batch, the anchor's calibration and the accuracy come from ``data`` (with
    ``labelled`` False the top-1 and metric columns are None). Options are checked by the caller."""
    warn = warn or (lambda line: warnings.warn(line, stacklevel=5))  # at the caller of bench_module
    chosen = bench_model("model", model, input_size, want_trt="trt" in engines)
    first = next(iter(data))[0]
    models = with_baselines(chosen, input_size, engines, lambda: first[:ANCHOR_CALIBRATION].cpu().numpy(), warn,
                            fp32=fp32, anchor=anchor)
    batch_list = list(batches)
    result = run_bench(models, list(engines), batch_list,
                       lambda name, bm: make_runtime(name, bm, threads, torch_device, input_size,
                                                     engine_max_batch(batch_list)),
                       first[:SANITY_BATCH].cpu().numpy(), lambda: data, input_size, warmup,
                       None if seconds else iters, seconds, metric=metric)
    if not labelled:
        for row in result.rows:
            row["torch_top1"] = row["engine_top1"] = None
            if metric is not None:
                row["torch_metric"] = row["engine_metric"] = None
    return result.rows


def write_results(result: BenchResult, out_dir: Path) -> list[Path]:
    """bench.json (everything) and bench.csv (the rows)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "bench.json", result.to_dict())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(result.rows)
    atomic_write_text(out_dir / "bench.csv", buf.getvalue())
    return [out_dir / "bench.json", out_dir / "bench.csv"]


def plot_results(result: BenchResult, out_dir: Path, title: str = "") -> list[Path]:
    """latency_vs_bitops.png and accuracy_vs_latency.png, one panel per batch size, per engine; BitOPs and
    latency on log axes (so the fp32 point does not squeeze the quantized steps into one blob) with plain
    tick labels; ``title`` names the run (the engines are added)."""
    from proqha.deploy.plotting import legend_outside, plain_number, plain_ticks, pyplot, save_figure, time_label

    batches = sorted({r["batch"] for r in result.rows})
    engines = sorted({r["engine"] for r in result.rows})
    paths = []
    for name, (xkey, ykey, xlabel, ylabel) in {
            "latency_vs_bitops.png": ("gbitops", "median_ms", "GBitOPs", "median latency"),
            "accuracy_vs_latency.png": ("median_ms", "engine_top1", "median latency", "top-1 (%)")}.items():
        fig, axes = pyplot().subplots(1, len(batches), figsize=(5.0 * len(batches) + 1.5, 4.2), squeeze=False)
        for ax, batch in zip(axes[0], batches):
            rows = [r for r in result.rows if r["batch"] == batch]
            for engine in engines:
                pts = [r for r in rows if r["engine"] == engine]
                ax.plot([r[xkey] for r in pts], [r[ykey] for r in pts], "o", label=engine)
                for r in pts:
                    ax.annotate(r["model"], (r[xkey], r[ykey]), fontsize=6, textcoords="offset points", xytext=(3, 3))
            ax.set_xscale("log")
            plain_ticks(ax.xaxis, time_label if xkey == "median_ms" else plain_number)
            if ykey == "median_ms":
                ax.set_yscale("log")
                plain_ticks(ax.yaxis, time_label)
            ax.tick_params(axis="x", labelrotation=30, labelsize=7)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_title(f"batch {batch}", fontsize=9)
            ax.grid(alpha=0.3, which="both")
        legend_outside(axes[0][-1])
        fig.suptitle(f"{title + ': ' if title else ''}{', '.join(engines)}", fontsize=9)
        fig.tight_layout()
        paths.append(save_figure(fig, out_dir / name))
    return paths
