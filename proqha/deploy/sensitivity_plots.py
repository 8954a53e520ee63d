"""A sensitivity measurement drawn and written (``proqha sensitivity``): ``sensitivity.png``, a heat map of layers
x bits with one panel for weights and one for activations, and ``sensitivity.csv`` beside it."""

from __future__ import annotations

import math
from pathlib import Path

from proqha.deploy.plotting import pyplot, save_figure
from proqha.runs import RunDir
from proqha.search.sensitivity import Sensitivity, write_sensitivity_csv

METRICS = {"top1_drop": "top-1 drop (points)", "loss_damage": "loss increase"}
PANELS = (("w", "weights"), ("a", "activations"))


def plot_sensitivity(result: Sensitivity, path: Path, metric: str = "top1_drop", title: str = "") -> Path:
    """``sensitivity.png``: per panel (weights, activations) layers (rows) x bits (columns), coloured by
    ``metric`` (``METRICS``) with its value in each cell; a level not tried is grey."""
    plt = pyplot()
    layers = list(dict.fromkeys(r.layer for r in result.rows))
    panels = [(kind, label) for kind, label in PANELS if any(r.knob == kind for r in result.rows)]
    levels = sorted({r.bits for r in result.rows}, reverse=True)
    values = {(r.layer, r.knob, r.bits): getattr(r, metric) for r in result.rows}
    finite = [v for v in values.values() if math.isfinite(v)]
    top = max(max(finite, default=0.0), 1e-9)
    cmap = plt.get_cmap("Reds").with_extremes(bad="lightgrey")
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(2.2 + 0.9 * len(levels) * max(1, len(panels)),
                                                               1.6 + 0.32 * len(layers)), squeeze=False)
    image = None
    for ax, (kind, label) in zip(axes[0], panels):
        grid = [[values.get((layer, kind, b), math.nan) for b in levels] for layer in layers]
        image = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=top, aspect="auto")
        for y, row in enumerate(grid):
            for x, value in enumerate(row):
                if not math.isnan(value):
                    ax.text(x, y, "inf" if math.isinf(value) else f"{value:.2g}", ha="center", va="center",
                            fontsize=7, color="white" if math.isfinite(value) and value > 0.6 * top else "black")
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels([str(b) for b in levels])
        ax.set_yticks(range(len(layers)))
        ax.set_yticklabels(layers if ax is axes[0][0] else [""] * len(layers), fontsize=7)
        ax.set_xlabel(f"{label} bits")
        ax.set_title(label, fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), label=METRICS[metric], shrink=0.9)
    fig.suptitle(title or f"{result.arch}: {METRICS[metric]} with one knob lowered ({result.split}, "
                          f"{result.samples} images)", fontsize=10)
    return save_figure(fig, path)


def write_sensitivity(result: Sensitivity, metric: str = "top1_drop") -> list[Path]:
    """sensitivity.csv and sensitivity.png into ``result.out`` (created if missing); the paths written, also
    kept in ``result.written``."""
    folder = RunDir(result.out)
    folder.path.mkdir(parents=True, exist_ok=True)
    result.written = [write_sensitivity_csv(result, folder.sensitivity_csv),
                      plot_sensitivity(result, folder.sensitivity_png, metric)]
    return result.written
