"""Plot helpers every figure of proqha shares (the search's and the benchmark's): pyplot on the Agg backend,
imported on the first plot only, plain tick labels, legends outside the data, atomic PNG writes."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from proqha.files import atomic_write_bytes


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend, imported on first use (it is slow to load)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def legend_outside(ax: Any) -> None:
    """The legend to the right of the axes, where it cannot cover a point (``save_figure`` keeps it in)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)


def plain_number(value: float) -> str:
    """A tick label without exponents: 0.0022, 0.22, 22, 2200 (up to 4 significant digits)."""
    return f"{value:.4g}" if 1e-4 <= abs(value) < 1e5 or value == 0 else f"{value:.2g}"


def time_label(ms: float) -> str:
    """A latency tick in the unit that reads best: µs below 1 ms, else ms."""
    return f"{plain_number(ms * 1e3)} µs" if 0 < ms < 1 else f"{plain_number(ms)} ms"


def plain_ticks(axis: Any, label: Any = plain_number) -> None:
    """Ticks of a (log) axis labelled by ``label`` (no 2.2x10^-1): every decade, and its 2 and 5 (so an axis
    spanning less than a decade still reads)."""
    from matplotlib.ticker import FuncFormatter

    def minor(value: float, _pos: int) -> str:
        lead = value / 10 ** math.floor(math.log10(value)) if value > 0 else 0
        return label(value) if round(lead, 6) in (2.0, 5.0) else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _pos: label(v)))
    axis.set_minor_formatter(FuncFormatter(minor))


def save_figure(fig: Any, path: Path) -> Path:
    """Write a figure as PNG atomically (cropped to what it draws, legends outside included) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
