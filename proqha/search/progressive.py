"""The progressive search loop (ProQHA): sample, score, choose, fine-tune, log, repeat.

Every step's randomness derives from (seed, step), so a search resumed from its last completed step
gives the same result as an uninterrupted one. Each step leaves a row in ``frontier.csv``, a checkpoint
``checkpoints/step-NNN.pt`` and ``bits-stepNNN.json``; step 0 is the starting point.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from proqha import distributed
from proqha.builder import ModelRecipe, load_model
from proqha.checkpoint import save_checkpoint
from proqha.cost import CostReport, cost_report
from proqha.data import load_dataset
from proqha.errors import ProqhaError
from proqha.files import atomic_write_json, atomic_write_text
from proqha.quant import BitConfig
from proqha.runs import run_lock
from proqha.search.data import DatasetData, SearchData
from proqha.search.knobs import Knob, model_knobs, sample_candidates
from proqha.search.scores import Snapshot, accuracy_score, hessian_score
from proqha.search.select import choose_candidate
from proqha.train import LossFn, evaluate, make_optimizer, resolve_device, train_one_epoch

CRITERIA = ("hessian", "acc", "random")
INTERVALS = (1, 2, 4)
COST_METRICS = ("size", "bitops")
START_BITS = 8  # a float (32-bit) knob enters the search here
STEP_CKPT = re.compile(r"^step-(\d{3,})\.pt$")

CandidateCallback = Callable[[int, int, int], None]  # (step, candidate index, candidates)
StepCallback = Callable[[dict[str, Any]], None]


@dataclass
class SearchConfig:
    """Every option of a search (written to the run's config.json)."""

    source: str = ""
    candidates: int = 16
    ratio: float = 0.5
    interval: int = 1
    min_bits: int = 2
    criterion: str = "hessian"
    lam: float = 0.1
    steps: int = 8
    finetune_epochs: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    cost_metric: str | None = None
    target_cost: float | None = None
    target_bitops: float | None = None
    target_size_mb: float | None = None
    seed: int = 0
    device: str = "auto"
    workers: int = 0

    def resolved(self) -> "SearchConfig":
        """Validate ranges and combinations (ProqhaError naming the option); fill the cost metric."""
        checks = [
            ("--lam", self.lam, math.isfinite(self.lam) and self.lam >= 0, "must be >= 0"),
            ("--ratio", self.ratio, 0 < self.ratio <= 1, "must be in (0, 1]"),
            ("--interval", self.interval, self.interval in INTERVALS, "must be 1, 2 or 4"),
            ("--min-bits", self.min_bits, 2 <= self.min_bits <= 8, "must be in 2..8"),
            ("--candidates", self.candidates, self.candidates >= 1, "must be >= 1"),
            ("--steps", self.steps, self.steps >= 1, "must be >= 1"),
            ("--finetune-epochs", self.finetune_epochs, self.finetune_epochs >= 0, "must be >= 0"),
            ("--lr", self.lr, math.isfinite(self.lr) and self.lr > 0, "must be > 0"),
            ("--weight-decay", self.weight_decay, self.weight_decay >= 0, "must be >= 0"),
            ("--batch-size", self.batch_size, self.batch_size >= 1, "must be >= 1"),
            ("--criterion", self.criterion, self.criterion in CRITERIA, f"must be one of {', '.join(CRITERIA)}"),
        ]
        for option, value, ok, why in checks:
            if not ok:
                raise ProqhaError(f"{option} {why}, got {value}")
        targets = {"--target-cost": self.target_cost, "--target-bitops": self.target_bitops,
                   "--target-size-mb": self.target_size_mb}
        given = {k: v for k, v in targets.items() if v is not None}
        if len(given) > 1:
            raise ProqhaError(f"give one target at a time, got {' and '.join(given)}")
        for option, value in given.items():
            if not (math.isfinite(value) and value > 0):
                raise ProqhaError(f"{option} must be > 0, got {value}")
        follows = "bitops" if self.target_bitops is not None else "size" if given else None
        metric = self.cost_metric or follows or "size"
        if metric not in COST_METRICS:
            raise ProqhaError(f"--cost-metric must be size or bitops, got {metric!r}")
        if follows and self.cost_metric and self.cost_metric != follows:
            raise ProqhaError(f"--cost-metric {self.cost_metric} conflicts with {next(iter(given))} "
                              f"(which trades against {follows})")
        return SearchConfig(**(asdict(self) | {"cost_metric": metric}))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_source(path: Path) -> Path:
    """A checkpoint file, or the checkpoint a run stands at (train: last.pt; search: its last step)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ProqhaError(f"--from {path}: no such checkpoint or run directory")
    if (path / "checkpoints" / "last.pt").is_file():
        return path / "checkpoints" / "last.pt"
    steps = step_checkpoints(path)
    if steps:
        return steps[-1][1]
    raise ProqhaError(f"--from {path}: the run has no checkpoint yet")


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The step checkpoints of a search run, in step order."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_CKPT.match(p.name))]
    return sorted(found)


def _step_seed(seed: int, step: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + step * 10_007 + salt) % (2**63)


def target_met(cfg: SearchConfig, report: CostReport) -> bool:
    """Whether the model's cost satisfies the configured target (BitOPs <= 1: a ratio to 32x32)."""
    if cfg.target_cost is not None:
        return report.paper_cost <= cfg.target_cost + 1e-12
    if cfg.target_bitops is not None:
        value = report.bitops_ratio if cfg.target_bitops <= 1 else report.bitops
        return value <= cfg.target_bitops * (1 + 1e-12)
    if cfg.target_size_mb is not None:
        return report.size_bytes / 1e6 <= cfg.target_size_mb
    return False


class FrontierLog:
    """``frontier.csv``: one row per completed step, knob columns fixed at the start."""

    FIELDS = ["step", "cost", "bitops", "bitops_ratio", "size_bytes", "score", "train_top1", "test_top1",
              "test_top5", "wall_s"]

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


class ProgressiveSearch:
    """One search run: a quantized model, its data, and the step loop.

    ``from_checkpoint`` builds one from a checkpoint and its dataset (the CLI); the Python API passes
    the caller's model and batches. With ``run_dir`` None nothing is written: the rows stay in ``rows``.
    """

    def __init__(self, cfg: SearchConfig, model: torch.nn.Module, data: SearchData, input_size: tuple[int, ...],
                 device: torch.device, run_dir: Path | None = None, recipe: ModelRecipe | None = None,
                 dataset: str = "", data_options: dict[str, Any] | None = None,
                 source_metrics: dict[str, Any] | None = None, loss_fn: LossFn | None = None) -> None:
        self.cfg, self.device = cfg, device
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.model, self.data, self.input_size = model.to(device), data, tuple(input_size)
        self.recipe, self.dataset, self.loss_fn = recipe, dataset, loss_fn
        self.data_options = data_options or {}
        self.source_metrics: dict[str, Any] = source_metrics or {}
        self.rows: list[dict[str, Any]] = []
        self.knobs = model_knobs(self.model)
        if not self.knobs:
            name = recipe.arch if recipe is not None else type(model).__name__
            raise ProqhaError(f"{name} has no searchable layers (edge layers only)")
        bits = BitConfig.from_model(self.model).to_dict()
        for knob in self.knobs:
            if bits[knob.layer][knob.kind] == 32:
                bits[knob.layer][knob.kind] = START_BITS
        BitConfig(bits).apply(self.model)
        self.base_cost = cost_report(self.model, self.input_size)
        self.frontier = FrontierLog(self.run_dir / "frontier.csv", self.knobs) if self.run_dir is not None else None

    @classmethod
    def from_checkpoint(cls, cfg: SearchConfig, run_dir: Path, source: Path, device: torch.device
                        ) -> "ProgressiveSearch":
        """The search of a checkpoint: its model rebuilt from the recipe, its training run's dataset."""
        model, state = load_model(source, device)
        recipe = ModelRecipe.from_dict(state["recipe"])
        train_cfg = state.get("config", {})
        dataset = train_cfg.get("dataset", "digits")
        data_dir, download = train_cfg.get("data_dir"), bool(train_cfg.get("download", False))
        data = DatasetData(load_dataset(dataset, "train", data_dir, download),
                           load_dataset(dataset, "calib", data_dir, download),
                           load_dataset(dataset, "test", data_dir, download), cfg.batch_size, cfg.workers)
        return cls(cfg, model, data, recipe.input_size, device, run_dir, recipe, dataset,
                   {"dataset": dataset, "data_dir": data_dir, "download": download}, state.get("metrics", {}))

    # -- pieces of a step -------------------------------------------------------------------------
    def bits(self) -> dict[str, dict[str, int]]:
        return BitConfig.from_model(self.model).to_dict()

    def cost_of(self, bits: dict[str, dict[str, int]]) -> CostReport:
        return self.base_cost.with_bits(bits)

    def score_candidates(self, step: int, candidates: list[dict], on_candidate: CandidateCallback | None
                         ) -> list[float]:
        cfg = self.cfg
        if cfg.criterion == "random":
            return [math.nan] * len(candidates)
        snap = Snapshot(self.model)
        x, y = self.data.scoring_batch(_step_seed(cfg.seed, step, 1))
        x, y = x.to(self.device), y.to(self.device)
        calib = self.data.calib_batches() if cfg.criterion == "acc" else None
        mine: dict[int, float] = {}
        rank, world = distributed.rank(), distributed.world_size()
        for i in range(rank, len(candidates), world):  # under torchrun each rank scores its share
            snap.restore(self.model)
            BitConfig(candidates[i]).apply(self.model)
            if cfg.criterion == "hessian":
                mine[i] = hessian_score(self.model, x, y, snap.tensors, lr=cfg.lr, loss_fn=self.loss_fn)
            else:
                mine[i] = accuracy_score(self.model, calib, self.device)
            if on_candidate is not None:
                on_candidate(step, i, len(candidates))
        snap.restore(self.model)
        scores: dict[int, float] = {}
        for part in distributed.all_gather(mine):
            scores.update(part)
        return [scores[i] for i in range(len(candidates))]

    def finetune(self, step: int, on_batch: Callable | None) -> float:
        cfg = self.cfg
        if cfg.finetune_epochs == 0:
            return math.nan
        optimizer = make_optimizer(self.model, "adam", cfg.lr, cfg.weight_decay)
        steps = cfg.finetune_epochs * self.data.train_steps()
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        net = self.model
        if distributed.active():
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                                          else None)
        top1 = math.nan
        for epoch in range(cfg.finetune_epochs):
            seed = _step_seed(cfg.seed, step, 100 + epoch)
            torch.manual_seed(seed)
            loader = self.data.train_batches(seed)
            top1 = train_one_epoch(net, loader, optimizer, scheduler, self.device, epoch, on_batch,
                                   loss_fn=self.loss_fn)["train_top1"]
        return top1

    def evaluate_row(self, step: int, score: float, train_top1: float, t0: float) -> dict[str, Any]:
        bits = self.bits()
        report = self.cost_of(bits)
        batches = self.data.test_batches()
        test = evaluate(self.model, batches, self.device, self.loss_fn) if batches is not None else \
            {"test_top1": math.nan, "test_top5": math.nan}
        row: dict[str, Any] = {"step": step, "cost": report.paper_cost, "bitops": report.bitops,
                               "bitops_ratio": report.bitops_ratio, "size_bytes": report.size_bytes,
                               "score": score, "train_top1": train_top1, "test_top1": test["test_top1"],
                               "test_top5": test["test_top5"], "wall_s": time.perf_counter() - t0}
        row |= {k.column: bits[k.layer][k.kind] for k in self.knobs}
        return row

    def save_step(self, step: int, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not distributed.is_main() or self.run_dir is None or self.frontier is None:
            return
        bits = BitConfig.from_model(self.model)
        bits.save(self.run_dir / f"bits-step{step:03d}.json")
        recipe = self.recipe.to_dict() if self.recipe is not None else None
        save_checkpoint({"model": self.model.state_dict(), "recipe": recipe, "bits": bits.to_dict(),
                         "step": step, "search": self.cfg.to_dict(), "metrics": row,
                         "config": self.data_options},
                        self.run_dir / "checkpoints" / f"step-{step:03d}.pt")
        self.frontier.append(row)  # after the checkpoint: a logged step is always resumable
        bits.save(self.run_dir / "bits.json")

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, start_step: int, on_candidate: CandidateCallback | None = None,
            on_step: StepCallback | None = None, on_batch: Callable | None = None, fresh: bool = True
            ) -> dict[str, Any]:
        """Steps ``start_step + 1`` onwards; a ``fresh`` run first records step 0 (the starting point)."""
        cfg = self.cfg
        if fresh:
            t0 = time.perf_counter()
            row = self.evaluate_row(0, math.nan, math.nan, t0)
            self.save_step(0, row)
            if on_step is not None:
                on_step(row)
        reason, last_step = "steps", start_step
        if target_met(cfg, self.cost_of(self.bits())):
            return {"stopped": "target", "steps": start_step, "run_dir": self._run_dir_text()}
        for step in range(start_step + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            torch.manual_seed(_step_seed(cfg.seed, step))
            current = self.bits()
            gen = torch.Generator().manual_seed(_step_seed(cfg.seed, step, 2))
            candidates = sample_candidates(current, self.knobs, cfg.candidates, cfg.ratio, cfg.interval,
                                           cfg.min_bits, gen)
            if not candidates:
                reason = "floor"
                break
            base = self.cost_of(current).metric(cfg.cost_metric)
            savings = [base - self.cost_of(c).metric(cfg.cost_metric) for c in candidates]
            scores = self.score_candidates(step, candidates, on_candidate)
            if cfg.criterion == "random":
                chosen = int(torch.randint(len(candidates), (1,), generator=gen))
            else:
                chosen = choose_candidate(scores, savings, cfg.lam)
                if not math.isfinite(scores[chosen]):
                    raise ProqhaError(f"step {step}: every candidate's loss is non-finite; lower --lr")
            BitConfig(candidates[chosen]).apply(self.model)
            train_top1 = self.finetune(step, on_batch)
            row = self.evaluate_row(step, scores[chosen], train_top1, t0)
            self.save_step(step, row)
            last_step = step
            if on_step is not None:
                on_step(row)
            if target_met(cfg, self.cost_of(self.bits())):
                reason = "target"
                break
        return {"stopped": reason, "steps": last_step, "run_dir": self._run_dir_text()}

    def _run_dir_text(self) -> str | None:
        return str(self.run_dir) if self.run_dir is not None else None


def run_search(cfg: SearchConfig, run_dir: Path, resume: bool = False,
               on_candidate: CandidateCallback | None = None, on_step: StepCallback | None = None,
               on_batch: Callable | None = None, on_start: Callable[[ProgressiveSearch], None] | None = None
               ) -> dict[str, Any]:
    """Run (or with ``resume``, continue) a search of ``cfg`` in ``run_dir``.

    Returns ``{"stopped": "steps" | "target" | "floor", "steps": last completed step, "run_dir": ...}``.
    Everything is validated before anything is written; the run directory is locked while searching.
    A resume before any completed step starts over from ``cfg.source``.
    """
    run_dir = Path(run_dir)
    distributed.setup()
    device = distributed.local_device(resolve_device(cfg.device))
    done = step_checkpoints(run_dir) if resume else []
    start, source = done[-1] if done else (0, resolve_source(Path(cfg.source)))  # no step yet: from the start
    search = ProgressiveSearch.from_checkpoint(cfg, run_dir, source, device)
    main = distributed.is_main()  # under torchrun only rank 0 writes and reports
    if not main:
        on_candidate = on_step = on_batch = None
    if on_start is not None and main:
        on_start(search)
    with run_lock(run_dir) if main else contextlib.nullcontext():
        if done and main:
            search.frontier.resume_at(start, search.source_metrics)
        elif main:
            search.frontier.path.unlink(missing_ok=True)
            atomic_write_json(run_dir / "config.json", cfg.to_dict() | {"stage": "search",
                                                                        "source_checkpoint": str(source),
                                                                        "recipe": search.recipe.to_dict(),
                                                                        "dataset": search.dataset})
        return search.run(start, on_candidate, on_step, on_batch, fresh=not done)
