"""A search run drawn and compared: accuracy against paper cost, BitOPs and exported file size
(``frontier.png``, ``frontier_file_size.png``), per-layer bits (``bits.png``), and the uniform-bit train runs
of the same recipe beside it (``search_baselines``). What ``proqha report`` and ``proqha search`` write."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proqha.deploy.plotting import legend_outside, pyplot, save_figure
from proqha.errors import OptionError, ProqhaError
from proqha.files import read_jsonl
from proqha.runs import CHECKPOINTS, RunDir
from proqha.search.frontier import knob_layers, step_checkpoints
from proqha.search.knobs import KNOB_SEP


@dataclass
class UniformPoint:
    """A uniform-bit QAT run found beside the search, for comparison (``start``: the run it started from)."""

    run: str
    bits: int
    cost: float
    bitops: float
    test_top1: float
    start: bool = False
    path: str = ""  # the run folder


RECIPE_KEYS = ("arch", "dataset", "data_dir", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
               "weight_quantizer", "edge_layers", "int8_kernels", "share_grids", "init", "amp")
"""What makes two train runs the same recipe (all but bits, seed, where and how fast they ran)."""


def _uniform_point(run: Path, start: bool = False) -> tuple[UniformPoint, dict[str, Any]] | None:
    folder = RunDir(run)
    try:
        config = json.loads(folder.config.read_text())
        cost = json.loads(folder.cost.read_text())["totals"]
        rows = read_jsonl(folder.metrics)
    except (OSError, ValueError, KeyError):
        return None
    if not rows or config.get("bits_file") or config.get("stage", "train") not in ("train", "quantize"):
        return None
    return UniformPoint(run.name, int(config["bits"]), float(cost["paper_cost"]), float(cost["bitops"]),
                        float(rows[-1]["test_top1"]), start, str(run)), config


def uniform_baselines(root: Path, recipe: dict[str, Any]) -> list[UniformPoint]:
    """Train runs under ``root`` at uniform bits (no bits file) whose ``RECIPE_KEYS`` equal ``recipe``'s."""
    points = []
    for run in sorted(Path(root).glob("train-*")):
        found = _uniform_point(run)
        if found is not None and all(found[1].get(k) == recipe.get(k) for k in RECIPE_KEYS):
            points.append(found[0])
    return points


def search_baselines(run_dir: Path) -> list[UniformPoint]:
    """What a search is compared with: the train run it started from (first, ``start``) and the uniform-bit
    train runs beside it of that run's recipe (``RECIPE_KEYS``); none when the start is not a uniform-bit
    train or quantize run (a search, or a run with a bits file)."""
    config = run_config(run_dir)
    source = Path(config.get("source", "")) if config.get("source") else None
    if (source is None or not source.exists()) and config.get("source_checkpoint"):
        source = Path(config["source_checkpoint"])
    if source is not None and (source.is_file() or source.suffix == ".pt"):  # a checkpoint: its run folder
        source = source.parent.parent if source.parent.name == CHECKPOINTS else source.parent
    if source is not None and not source.is_dir():  # recorded relative to another working directory
        source = Path(run_dir).parent / source.name
    start = _uniform_point(source, start=True) if source is not None and source.is_dir() else None
    if start is None:
        return []
    others = [p for p in uniform_baselines(source.parent, start[1]) if p.run != source.name]
    return [start[0]] + others


def dominating_steps(rows: list[dict[str, Any]], point: UniformPoint) -> list[int]:
    """Search steps that dominate a uniform point: no more paper cost, no more BitOPs, no less top-1."""
    return [r["step"] for r in rows if r["cost"] <= point.cost * (1 + 1e-9) and r["bitops"] <= point.bitops
            * (1 + 1e-9) and not is_nan(r["test_top1"]) and r["test_top1"] >= point.test_top1]


def plot_frontier(rows: list[dict[str, Any]], baselines: list[UniformPoint], path: Path, title: str = "") -> Path:
    """``frontier.png``: test top-1 against paper cost (left) and GBitOPs (right), steps labelled."""
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label, scale in ((axes[0], "cost", "paper cost (weight bits / 32)", 1.0),
                                  (axes[1], "bitops", "GBitOPs", 1e-9)):
        xs = [r[key] * scale for r in rows]
        ys = [r["test_top1"] for r in rows]
        ax.plot(xs, ys, "o-", color="tab:blue", label="ProQHA search steps")
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(str(r["step"]), (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7)
        for point in baselines:
            value = point.cost if key == "cost" else point.bitops * scale
            ax.plot([value], [point.test_top1], "s", color="tab:red")
            ax.annotate(f"{'start, ' if point.start else ''}uniform {point.bits}b", (value, point.test_top1),
                        textcoords="offset points",
                        xytext=(3, -10), fontsize=7, color="tab:red")
        ax.set_xlabel(label)
        ax.set_ylabel("test top-1 (%)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    if baselines:
        axes[1].plot([], [], "s", color="tab:red", label="uniform-bit QAT")
    legend_outside(axes[1])
    fig.suptitle(title or "accuracy against cost")
    fig.tight_layout()
    return save_figure(fig, path)


def measure_file_sizes(run_dir: Path, rows: list[dict[str, Any]], baselines: list[UniformPoint]
                       ) -> tuple[int, list[tuple[UniformPoint, int]]]:
    """Export every step (and each uniform-bit run's last checkpoint) as ``proqha export`` would, without
    validating: sets ``row["file_bytes"]``; returns the fp32 graph's size and the baselines' sizes."""
    from proqha.export.file_size import exported_file, fp32_graph_bytes, source_metadata
    from proqha.recipe import load_model

    done = dict(step_checkpoints(run_dir))
    fp32 = None
    for r in rows:
        if r["step"] not in done:
            raise ProqhaError(f"measuring file sizes: step {r['step']} of {run_dir} has no checkpoint")
        r["file_bytes"] = len(exported_file(done[r["step"]], r["step"]))
        if fp32 is None:
            model, state = load_model(done[r["step"]])
            fp32 = fp32_graph_bytes(model, state.input_size, source_metadata(state, done[r["step"]], r["step"]))
    sizes = [(point, len(exported_file(RunDir(point.path or Path(run_dir).parent / point.run).last)))
             for point in baselines]
    return fp32, sizes


def plot_file_size(rows: list[dict[str, Any]], baselines: list[tuple[UniformPoint, int]], fp32_bytes: int,
                   path: Path, title: str = "") -> Path:
    """``frontier_file_size.png``: test top-1 against the exported ONNX file's size (KB, and as a fraction
    of the fp32 graph on the top axis), search steps (rows with ``file_bytes``) and uniform-bit runs."""
    fig, ax = pyplot().subplots(figsize=(6.5, 4.2))
    xs = [r["file_bytes"] / 1e3 for r in rows]
    ax.plot(xs, [r["test_top1"] for r in rows], "o-", color="tab:blue", label="ProQHA search steps")
    for r, x in zip(rows, xs):
        ax.annotate(str(r["step"]), (x, r["test_top1"]), textcoords="offset points", xytext=(3, 4), fontsize=7)
    for point, size in baselines:
        ax.plot([size / 1e3], [point.test_top1], "s", color="tab:red")
        ax.annotate(f"{'start, ' if point.start else ''}uniform {point.bits}b", (size / 1e3, point.test_top1),
                    textcoords="offset points",
                    xytext=(3, -10), fontsize=7, color="tab:red")
    if baselines:
        ax.plot([], [], "s", color="tab:red", label="uniform-bit QAT")
    top = ax.secondary_xaxis("top", functions=(lambda kb: kb * 1e3 / fp32_bytes, lambda r: r * fp32_bytes / 1e3))
    top.set_xlabel("file size / fp32 graph")
    ax.set_xlabel("ONNX file size (KB)")
    ax.set_ylabel("test top-1 (%)")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    legend_outside(ax)
    ax.set_title(title or "accuracy against file size", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_latency(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """``frontier_latency.png``: test top-1 against latency per search step, measured (the whole graph) and
    predicted (the per-layer table), for a search with a latency table."""
    fig, ax = pyplot().subplots(figsize=(6.5, 4.2))
    timed = [r for r in rows if not is_nan(r.get("latency_ms", math.nan))]
    ax.plot([r["latency_ms"] for r in timed], [r["test_top1"] for r in timed], "o-", color="tab:blue",
            label="search steps, measured")
    ax.plot([r["latency_ms_pred"] for r in timed], [r["test_top1"] for r in timed], "x", color="tab:gray",
            label="predicted (per-layer table)")
    for r in timed:
        ax.annotate(str(r["step"]), (r["latency_ms"], r["test_top1"]), textcoords="offset points", xytext=(3, 4),
                    fontsize=7)
    ax.set_xlabel("latency per call (ms)")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    legend_outside(ax)
    ax.set_title(title or "accuracy against latency", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_bits(row: dict[str, Any], path: Path, title: str = "") -> Path:
    """``bits.png``: the searched bits (weights and/or activations) of every searchable layer at one step."""
    layers = knob_layers(row)
    kinds = [(kind, label) for kind, label in (("w", "weights"), ("a", "activations"))
             if any(f"{n}{KNOB_SEP}{kind}" in row for n in layers)]
    fig, ax = pyplot().subplots(figsize=(max(6.0, 0.45 * len(layers) + 2), 4))
    xs = range(len(layers))
    width = 0.8 / len(kinds)
    for i, (kind, label) in enumerate(kinds):
        offset = (i - (len(kinds) - 1) / 2) * width
        ax.bar([x + offset for x in xs], [row.get(f"{n}{KNOB_SEP}{kind}", 0) for n in layers], width, label=label)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(layers, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("bits")
    ax.set_ylim(0, 8.5)
    legend_outside(ax)
    ax.set_title(title or f"step {row['step']}: cost {row['cost']:.4f}, top-1 {row['test_top1']:.2f}%")
    fig.tight_layout()
    return save_figure(fig, path)


def pick_row(rows: list[dict[str, Any]], step: int | None) -> dict[str, Any]:
    """The row of ``step`` (default: the last)."""
    if step is None:
        return rows[-1]
    for row in rows:
        if row["step"] == step:
            return row
    raise OptionError("step", f"{step}: the run has steps {rows[0]['step']}..{rows[-1]['step']}")


def is_nan(value: Any) -> bool:
    """Whether ``value`` is a float NaN (a step without that figure)."""
    return isinstance(value, float) and math.isnan(value)


def run_config(run_dir: Path) -> dict[str, Any]:
    """A run's ``config.json`` ({} when it has none)."""
    path = RunDir(run_dir).config
    return json.loads(path.read_text()) if path.is_file() else {}


def write_search_plots(run_dir: Path, rows: list[dict[str, Any]], step: int | None = None,
                       files: tuple[int, list[tuple[UniformPoint, int]]] | None = None) -> list[Path]:
    """frontier.png (with the uniform-bit train runs beside the search), bits.png of one step (default: the
    last), frontier_latency.png for a search with a latency table and, with ``files`` (from
    ``measure_file_sizes``), frontier_file_size.png; the paths written."""
    run_dir = Path(run_dir)
    arch = (run_config(run_dir).get("recipe") or {}).get("arch", "")
    row = pick_row(rows, step)
    paths = [plot_frontier(rows, search_baselines(run_dir), run_dir / "frontier.png",
                           f"{arch} ProQHA frontier ({run_dir.name})"),
             plot_bits(row, run_dir / "bits.png")]
    if any(not is_nan(r.get("latency_ms", math.nan)) for r in rows):
        paths.append(plot_latency(rows, run_dir / "frontier_latency.png",
                                  f"{arch}: accuracy against latency ({run_dir.name})"))
    if files is not None:
        paths.append(plot_file_size(rows, files[1], files[0], run_dir / "frontier_file_size.png",
                                    f"{arch}: accuracy against the exported file's size ({run_dir.name})"))
    return paths
