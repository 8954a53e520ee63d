"""Which layers hurt: the loss and top-1 of a quantized model with one knob (a layer's weights or activations)
at a lower bit level and everything else at its current bits. ``measure_knobs`` is the one measurement: the
``allocate`` strategy's loss table (``damage_table``) and ``proqha sensitivity`` (``measure_sensitivity``,
``SensitivityConfig``; its csv: ``write_sensitivity_csv``) both read it. Importable without torch (the CLI
reads ``SensitivityConfig`` before any heavy import)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple, Sequence

from proqha.options import check_options, option

if TYPE_CHECKING:  # annotations only: torch loads inside the functions that measure
    import torch
    from torch import nn

    from proqha.search.allocate import Damage
    from proqha.search.data import Batch
    from proqha.search.knobs import BitsLike, Knob
    from proqha.train import LossFn

DEFAULT_BITS = (8, 6, 4, 2)
SPLITS = ("calib", "test")
CSV_COLUMNS = ("layer", "knob", "bits", "loss", "top1", "loss_damage", "top1_drop")
JobCallback = Callable[[int, int], None]  # (jobs done, jobs)


def _bit_levels(value: object) -> bool:
    return isinstance(value, (tuple, list)) and bool(value) and all(isinstance(b, int) and 2 <= b <= 8 for b in value)


RANKINGS = ("top1_drop", "loss_damage")  # SensitivityRow fields that measure damage


@dataclass
class SensitivityConfig:
    """What ``proqha sensitivity`` measures and where it writes (``measure_sensitivity``)."""

    run: Path | None = option(None, "Train, quantize or search run (its chosen step), or a checkpoint (default: "
                                    "the latest search run, else the newest train or quantize run).")
    bits: tuple[int, ...] = option(DEFAULT_BITS, "Bit levels to try, comma-separated (2..8); a knob tries those "
                                                 "below its current bits.", check=_bit_levels,
                                   why="must be comma-separated bits in 2..8")
    split: str = option("calib", "Data measured on: calib (held out of training) or test.", choices=SPLITS)
    samples: int | None = option(None, "Images of the split (default: all).", low=1)
    batch_size: int = option(256, "Evaluation batch size.", low=1)
    out: Path | None = option(None, "Folder of sensitivity.csv and sensitivity.png (default: the run's folder).")
    top: int = option(20, "Rows of the printed table, worst first.", low=1)
    rank_by: str = option("top1_drop", "What ranks the table and colours the heat map: top1_drop or loss_damage "
                                       "(the loss increase: finer on small splits).", choices=RANKINGS)
    device: str = option("cpu", "Device to measure on: auto, cpu, cuda or cuda:N.")

    def resolved(self) -> SensitivityConfig:
        """Every option checked (``OptionError`` naming the first bad one); bits highest first, once each."""
        check_options(self)
        return SensitivityConfig(**{**self.__dict__, "bits": tuple(sorted(set(self.bits), reverse=True))})


class Measured(NamedTuple):
    """Mean loss and top-1 (percent) of one evaluation."""

    loss: float
    top1: float


def measure_knobs(model: nn.Module, current: BitsLike, jobs: Sequence[tuple[Knob, int]], batches: Iterable[Batch],
                  device: torch.device, loss_fn: LossFn | None = None, on_job: JobCallback | None = None
                  ) -> tuple[Measured, list[Measured]]:
    """The model at ``current`` bits measured on ``batches``, then once per job ``(knob, level)`` with only
    that knob at ``level``; the model is restored afterwards (parameters, buffers and bits)."""
    from proqha.quant import BitConfig
    from proqha.search.scores import Snapshot
    from proqha.train import evaluate_loader

    def measure() -> Measured:
        result = evaluate_loader(model, batches, device, loss_fn)
        return Measured(result["test_loss"], result["test_top1"])

    snap = Snapshot(model)
    try:
        BitConfig(current).apply(model)
        base, found = measure(), []
        for i, (knob, level) in enumerate(jobs):
            bits = {name: dict(kb) for name, kb in current.items()}
            bits[knob.layer][knob.kind] = level
            BitConfig(bits).apply(model)
            found.append(measure())
            if on_job is not None:
                on_job(i + 1, len(jobs))
    finally:
        snap.restore(model)
    return base, found


def damage_table(model: nn.Module, current: BitsLike, knobs: Sequence[Knob], min_bits: int, batches: Iterable[Batch],
                 device: torch.device, loss_fn: LossFn | None = None, on_job: JobCallback | None = None,
                 above: Sequence[int] = (), pays: Callable[[Knob, int], bool] | None = None) -> Damage:
    """Per knob above ``min_bits``, the loss the model adds with only that knob at each level from ``min_bits``
    to its current bits (0 at the current level; a non-finite loss adds inf): the allocate strategy's table.
    ``above``: levels over a knob's current bits to measure too (32: float), whose loss change is kept as
    measured (negative where the level removes loss); a knob at ``min_bits`` then has a row as well.
    ``pays(knob, level)``: measure only the lower levels for which it is true (one that saves nothing only
    adds loss, so no allocation would take it)."""
    from proqha.quant.grid import VALID_BITS

    jobs = [(knob, level) for knob in knobs
            for level in [*(b for b in VALID_BITS if min_bits <= b < current[knob.layer][knob.kind]
                            and (pays is None or pays(knob, b))),
                          *(b for b in above if b > current[knob.layer][knob.kind])]]
    base, found = measure_knobs(model, current, jobs, batches, device, loss_fn, on_job)
    table: Damage = {k: {current[k.layer][k.kind]: 0.0} for k in knobs
                     if current[k.layer][k.kind] > min_bits or any(b > current[k.layer][k.kind] for b in above)}
    for (knob, level), got in zip(jobs, found):
        change = got.loss - base.loss
        lower = level < current[knob.layer][knob.kind]
        table[knob][level] = (max(change, 0.0) if lower else change) if math.isfinite(got.loss) else math.inf
    return table


@dataclass(frozen=True)
class SensitivityRow:
    """One knob at one level: loss and top-1, and their change from the unchanged model."""

    layer: str
    knob: str  # "w" or "a"
    bits: int
    loss: float
    top1: float
    loss_damage: float  # loss - the unchanged model's loss
    top1_drop: float  # the unchanged model's top-1 - top1 (percentage points)


@dataclass
class Sensitivity:
    """What ``measure_sensitivity`` found: the checkpoint, the data, the unchanged model and one row per
    (layer, knob, bits), the knob's current bits included; ``out``: where its files go."""

    checkpoint: Path
    run_dir: Path
    step: int | None
    arch: str
    split: str
    samples: int
    base: Measured
    current: dict[str, dict[str, int]]
    rows: list[SensitivityRow]
    out: Path
    written: list[Path] = field(default_factory=list)

    def worst(self, count: int | None = None, by: str = "top1_drop") -> list[SensitivityRow]:
        """The rows below a knob's current bits, most damage first (``by``: top1_drop or loss_damage; ties by
        the other), at most ``count``."""
        other = "loss_damage" if by == "top1_drop" else "top1_drop"
        lowered = [r for r in self.rows if r.bits != self.current[r.layer][r.knob]]
        ranked = sorted(lowered, key=lambda r: (-_finite(getattr(r, by)), -_finite(getattr(r, other))))
        return ranked if count is None else ranked[:count]


def _finite(value: float) -> float:
    return value if not math.isnan(value) else -math.inf


def sensitivity_jobs(current: BitsLike, knobs: Sequence[Knob], bits: Sequence[int]) -> list[tuple[Knob, int]]:
    """Per knob, each of ``bits`` below its current bits (highest first)."""
    return [(knob, level) for knob in knobs for level in sorted(set(bits), reverse=True)
            if level < current[knob.layer][knob.kind]]


def measure_sensitivity(cfg: SensitivityConfig, on_job: JobCallback | None = None,
                        on_start: Callable[[Sensitivity, int], None] | None = None) -> Sensitivity:
    """Measure ``cfg.run``'s checkpoint (as ``runs.pick_checkpoint`` picks it) with each searchable knob at each
    of ``cfg.bits`` below its current bits, on ``cfg.split``; nothing is written (``write_sensitivity_csv``).
    ``on_start(result without rows, jobs)`` is called once the model and data are loaded."""
    from torch.utils.data import Subset

    from proqha.data import DataSource
    from proqha.files import check_writable
    from proqha.quant import BitConfig, QuantConfig, switch_on_fixed_quantizers
    from proqha.recipe import ModelRecipe, load_model
    from proqha.runs import CHECKPOINTS, pick_checkpoint
    from proqha.search.knobs import model_knobs
    from proqha.train import make_loader, resolve_device

    cfg = cfg.resolved()
    device = resolve_device(cfg.device)
    picked = pick_checkpoint(cfg.run)
    run_dir = picked.run_dir.parent if picked.run_dir.name == CHECKPOINTS else picked.run_dir
    out = Path(cfg.out) if cfg.out is not None else run_dir
    check_writable(out, "out", folder=True)
    model, state = load_model(picked.checkpoint, device)
    recipe = ModelRecipe.from_dict(state.recipe)
    if recipe.float_run:  # as the search: the fixed quantizers on, so that a knob's bits take effect
        switch_on_fixed_quantizers(model, QuantConfig(**recipe.quant))
    data = DataSource.from_dict(state.data).load(cfg.split)
    if cfg.samples is not None:
        data = Subset(data, range(min(cfg.samples, len(data))))  # type: ignore[arg-type]
    batches = make_loader(data, cfg.batch_size, shuffle=False)
    knobs = model_knobs(model)
    current = BitConfig.from_model(model).to_dict()
    jobs = sensitivity_jobs(current, knobs, cfg.bits)
    result = Sensitivity(picked.checkpoint, run_dir, picked.step, recipe.arch, cfg.split, len(data),  # type: ignore[arg-type]
                         Measured(math.nan, math.nan), current, [], out)
    if on_start is not None:
        on_start(result, len(jobs))
    base, found = measure_knobs(model, current, jobs, batches, device, on_job=on_job)
    result.base = base
    measured = dict(zip(jobs, found))
    for knob in knobs:
        now = current[knob.layer][knob.kind]
        levels = [(now, base)] + [(level, measured[(knob, level)]) for level in sorted(cfg.bits, reverse=True)
                                  if (knob, level) in measured]
        result.rows += [SensitivityRow(knob.layer, knob.kind, level, got.loss, got.top1, got.loss - base.loss,
                                       base.top1 - got.top1) for level, got in levels]
    return result


def sensitivity_csv(result: Sensitivity) -> str:
    """The csv text: one row per (layer, knob, bits), ``CSV_COLUMNS``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in result.rows:
        writer.writerow([r.layer, r.knob, r.bits, repr(r.loss), repr(r.top1), repr(r.loss_damage), repr(r.top1_drop)])
    return buf.getvalue()


def write_sensitivity_csv(result: Sensitivity, path: Path) -> Path:
    """Write ``sensitivity_csv`` atomically to ``path``."""
    from proqha.files import atomic_write_text

    atomic_write_text(Path(path), sensitivity_csv(result))
    return Path(path)


def read_sensitivity_csv(path: Path) -> list[SensitivityRow]:
    """The rows of a written sensitivity.csv."""
    with open(path, newline="") as f:
        return [SensitivityRow(r["layer"], r["knob"], int(r["bits"]), float(r["loss"]), float(r["top1"]),
                               float(r["loss_damage"]), float(r["top1_drop"])) for r in csv.DictReader(f)]
