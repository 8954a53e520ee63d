"""A search run's record: ``frontier.csv``, one row per completed step (paper cost, BitOPs, size, the predicted
exported file's bytes where the search measured one (``file_bytes``), the predicted and measured latency and
the prediction's relative error where it has a latency table (``latency_ms_pred``, ``latency_ms``, ``latency_err``;
``latency_ratio``: the measured graph over the uniform 8-bit graph), score,
accuracies (``test_metric``: the API's ``metric=``, else empty), fine-tuning epochs, the final race's winner and margin, wall time, and each knob's bits in a
``layer/kind`` column), and a checkpoint per step (``checkpoints/step-NNN.pt``); the file names are ``proqha.runs.RunDir``'s. The search writes them
(``FrontierLog``, through ``proqha.search.record``); reports, export and bench read them (``read_frontier``,
``step_checkpoints``)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from proqha.errors import ProqhaError
from proqha.files import atomic_write_text
from proqha.runs import FRONTIER_FILE, RunDir
from proqha.search.knobs import KNOB_SEP, Knob

__all__ = ["FRONTIER_FILE", "FrontierLog", "knob_layers", "read_frontier", "step_checkpoint", "step_checkpoints"]


TEXT_FIELDS = {"selected"}  # the final race's winner; every other column is a number


class FrontierLog:
    """``frontier.csv``: one row per completed step, knob columns fixed at the start."""

    FIELDS = ["step", "cost", "bitops", "bitops_ratio", "size_bytes", "file_bytes", "latency_ms_pred", "latency_ms",
              "latency_ratio", "latency_err", "score", "train_top1",
              "test_top1", "test_top5", "test_metric", "epochs", "selected", "selected_margin", "wall_s"]

    def __init__(self, path: Path, knobs: list[Knob]) -> None:
        self.path = path
        self.columns = self.FIELDS + [k.column for k in knobs]

    def rows(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def resume_at(self, step: int, row: dict[str, Any]) -> None:
        """Make the log end at ``step``, whose checkpointed ``row`` is re-added if a kill lost it."""
        rows = [r for r in self.rows() if int(r["step"]) < step]
        self._write(rows + [{c: row.get(c, "") for c in self.columns}])

    def append(self, row: dict[str, Any]) -> None:
        self._write(self.rows() + [{c: row.get(c, "") for c in self.columns}])

    def _write(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())


def read_frontier(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``frontier.csv`` with numbers parsed (NaN where a step has no value)."""
    path = RunDir(run_dir).frontier
    if not path.is_file():
        raise ProqhaError(f"{run_dir} is not a search run (no frontier.csv)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    parsed = []
    for row in rows:
        out: dict[str, Any] = {}
        for key, value in row.items():
            if key in TEXT_FIELDS:
                out[key] = value or ""
            else:
                out[key] = int(value) if key == "step" or KNOB_SEP in key else float(value or "nan")
        parsed.append(out)
    if not parsed:
        raise ProqhaError(f"{path} has no completed step yet")
    return parsed


def knob_layers(row: dict[str, Any]) -> list[str]:
    """Layer names of the knob columns, in column order."""
    return list(dict.fromkeys(k.split(KNOB_SEP)[0] for k in row if KNOB_SEP in k))


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The step checkpoints of a search run, in step order."""
    return RunDir(run_dir).step_checkpoints()


def step_checkpoint(run_dir: Path, step: int) -> Path:
    """Where a search run keeps the checkpoint of ``step``."""
    return RunDir(run_dir).step_checkpoint(step)
