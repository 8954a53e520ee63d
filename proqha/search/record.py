"""The files of a search run, one writer for the CLI's runs and the Python API's alike: ``config.json`` when
a run starts; per completed step its checkpoint (``checkpoints/step-NNN.pt``), ``bits-stepNNN.json``, its row
in ``frontier.csv`` and ``bits.json`` (the latest bits). Every file is written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch import nn

from proqha.checkpoint import Checkpoint, save_checkpoint
from proqha.files import atomic_write_json
from proqha.quant import BitConfig
from proqha.runs import RunDir
from proqha.search.config import SearchConfig
from proqha.search.frontier import FrontierLog
from proqha.search.knobs import Knob


def write_search_config(run_dir: Path, cfg: SearchConfig, input_size: Sequence[int], recipe: dict[str, Any] | None,
                        dataset: str = "", source_checkpoint: Path | None = None) -> Path:
    """``config.json`` of a search run: every option of ``cfg``, the stage, and what the search started from
    (the checkpoint, its model recipe and dataset; None and "" for a Python-API model)."""
    path = RunDir(run_dir).config
    atomic_write_json(path, cfg.to_dict() | {"stage": "search",
                                             "source_checkpoint": str(source_checkpoint) if source_checkpoint else None,
                                             "recipe": recipe, "dataset": dataset, "input_size": list(input_size)})
    return path


class SearchRecord:
    """Writes one search run's files into ``run_dir``: the frontier's knob columns are ``knobs``; each step's
    checkpoint also holds ``recipe`` (None for a Python-API model), ``data`` (where the data came from:
    ``DataSource.to_dict()``, class names included; empty for a Python-API model) and the options ``cfg``."""

    def __init__(self, run_dir: Path, knobs: list[Knob], cfg: SearchConfig, recipe: dict[str, Any] | None = None,
                 data: dict[str, Any] | None = None) -> None:
        self.folder, self.cfg, self.recipe, self.data = RunDir(run_dir), cfg, recipe, data or {}
        self.frontier = FrontierLog(self.folder.frontier, knobs)

    def start(self, input_size: Sequence[int], dataset: str = "", source_checkpoint: Path | None = None) -> None:
        """A fresh run: no frontier yet, and its ``config.json``."""
        self.frontier.path.unlink(missing_ok=True)
        write_search_config(self.folder.path, self.cfg, input_size, self.recipe, dataset, source_checkpoint)

    def resume_at(self, step: int, row: dict[str, Any]) -> None:
        """A resumed run: the frontier ends at ``step`` (its checkpointed ``row``)."""
        self.frontier.resume_at(step, row)

    def save_step(self, step: int, model: nn.Module, row: dict[str, Any]) -> None:
        """A completed step: its bits, its checkpoint, then its frontier row (a logged step is always
        resumable), then ``bits.json``."""
        bits = BitConfig.from_model(model)
        bits.save(self.folder.step_bits(step))
        save_checkpoint(Checkpoint("search", model.state_dict(), self.recipe, bits.to_dict(), self.data, row,
                                   self.cfg.to_dict(), step=step), self.folder.step_checkpoint(step))
        self.frontier.append(row)
        bits.save(self.folder.bits)
