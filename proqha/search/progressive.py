"""The progressive search loop (ProQHA): sample, score, choose, fine-tune, log, repeat.

Every step's randomness derives from (seed, step), so a search resumed from its last completed step
gives the same result as an uninterrupted one. Each step leaves a row in ``frontier.csv``, a checkpoint
``checkpoints/step-NNN.pt`` and ``bits-stepNNN.json``; step 0 is the starting point.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from proqha import distributed
from proqha.allocator import reuse_freed_memory
from proqha.builder import ModelRecipe, load_model
from proqha.checkpoint import Checkpoint, save_checkpoint
from proqha.compiling import maybe_compiled
from proqha.cost import CostReport, cost_report
from proqha.data import load_dataset
from proqha.errors import ProqhaError
from proqha.files import atomic_write_json
from proqha.health import OutputHealth
from proqha.quant import BitConfig, QuantConfig, switch_on_fixed_quantizers
from proqha.runs import removed_on_error, run_lock
from proqha.search.allocate import allocate
from proqha.search.config import START_BITS, SearchConfig
from proqha.search.data import DatasetData, SearchData
from proqha.search.frontier import FRONTIER_FILE, FrontierLog, step_checkpoint, step_checkpoints
from proqha.search.knobs import KNOB_KINDS, Knob, lowerable_knobs, lowered, model_knobs, sample_candidates
from proqha.search.scores import Snapshot, accuracy_score, hessian_score, loss_score
from proqha.search.select import objective
from proqha.seeds import Salt, step_seed
from proqha.train import (
    LossFn,
    evaluate,
    make_optimizer,
    output_warnings,
    resolve_device,
    train_one_epoch,
    training_net,
)

LOSS_FLOOR = 1e-6  # a candidate's loss increase is at least this (calibration noise can make it negative)
CandidateCallback = Callable[[int, int, int], None]  # (step, candidate index, candidates)
StepCallback = Callable[[dict[str, Any]], None]


def start_checkpoint(path: Path) -> Path:
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


def target_values(cfg: SearchConfig, report: CostReport) -> dict[str, tuple[float, float]]:
    """Each configured target's (value, limit) for ``report``: paper cost, BitOPs (a ratio to 32x32 bits
    when the limit is <= 1), size in MB. Empty when no target is set."""
    values = {}
    if cfg.target_cost is not None:
        values["cost"] = (report.paper_cost, cfg.target_cost)
    if cfg.target_bitops is not None:
        values["bitops"] = (report.bitops_ratio if cfg.target_bitops <= 1 else report.bitops, cfg.target_bitops)
    if cfg.target_size_mb is not None:
        values["size_mb"] = (report.size_bytes / 1e6, cfg.target_size_mb)
    return values


def _within(value: float, limit: float) -> bool:
    return value <= limit * (1 + 1e-12)


def target_met(cfg: SearchConfig, report: CostReport) -> bool:
    """Whether the model's cost satisfies every configured target (False when none is set)."""
    values = target_values(cfg, report)
    return bool(values) and all(_within(v, limit) for v, limit in values.values())


def budget_progress(cfg: SearchConfig, current: CostReport, candidate: CostReport) -> float:
    """How much of the remaining way to the targets a candidate covers: the sum, over targets not yet
    met, of (reduction / remaining gap); with no target, the reduction of ``cfg.cost_metric``."""
    now, then = target_values(cfg, current), target_values(cfg, candidate)
    if not now:
        return current.metric(cfg.cost_metric) - candidate.metric(cfg.cost_metric)
    return sum((value - then[name][0]) / (value - limit) for name, (value, limit) in now.items()
               if not _within(value, limit))


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
        if device.type == "cpu":  # the loss tables evaluate hundreds of times before any fine-tuning
            reuse_freed_memory()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.model, self.data, self.input_size = model.to(device), data, tuple(input_size)
        self.recipe, self.dataset, self.loss_fn = recipe, dataset, loss_fn
        self.data_options = data_options or {}
        self.source_metrics: dict[str, Any] = source_metrics or {}
        self.rows: list[dict[str, Any]] = []
        self.knobs = model_knobs(self.model, cfg.knobs)
        if not self.knobs:
            name = recipe.arch if recipe is not None else type(model).__name__
            raise ProqhaError(f"{name} has no searchable layers (edge layers only)")
        bits = BitConfig.from_model(self.model).to_dict()
        for knob in self.knobs:
            if bits[knob.layer][knob.kind] == 32:
                bits[knob.layer][knob.kind] = START_BITS
        if cfg.fixed_bits is not None:  # the kind not searched, fixed
            fixed = next(kind for kind in ("w", "a") if kind not in KNOB_KINDS[cfg.knobs])
            for layer in {k.layer for k in self.knobs}:
                bits[layer][fixed] = cfg.fixed_bits
        BitConfig(bits).apply(self.model)
        self.base_cost = cost_report(self.model, self.input_size)
        self.frontier = FrontierLog(self.run_dir / FRONTIER_FILE, self.knobs) if self.run_dir is not None else None

    @classmethod
    def from_checkpoint(cls, cfg: SearchConfig, run_dir: Path, source: Path, device: torch.device
                        ) -> "ProgressiveSearch":
        """The search of a checkpoint: its model rebuilt from the recipe, its training run's dataset."""
        model, state = load_model(source, device)
        recipe = ModelRecipe.from_dict(state.recipe)
        if recipe.float_run:  # a float run enters the search at START_BITS, all of it
            recipe = replace(recipe, quant={**recipe.quant, "bits": START_BITS})
            switch_on_fixed_quantizers(model, QuantConfig(**recipe.quant))
        dataset = state.dataset
        data_dir, download = state.data.get("data_dir"), bool(state.data.get("download", False))
        data = DatasetData(load_dataset(dataset, "train", data_dir, download),
                           load_dataset(dataset, "calib", data_dir, download),
                           load_dataset(dataset, "test", data_dir, download), cfg.batch_size, cfg.workers)
        return cls(cfg, model, data, recipe.input_size, device, run_dir, recipe, dataset,
                   {"dataset": dataset, "data_dir": data_dir, "download": download}, state.metrics)

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
        x, y = self.data.scoring_batch(step_seed(cfg.seed, step, Salt.SCORING_BATCH))
        x, y = x.to(self.device), y.to(self.device)
        calib = self.data.calib_batches() if cfg.criterion in ("acc", "loss") else None
        base = loss_score(self.model, calib, self.device, self.loss_fn) if cfg.criterion == "loss" else 0.0
        mine: dict[int, float] = {}
        rank, world = distributed.rank(), distributed.world_size()
        for i in range(rank, len(candidates), world):  # under torchrun each rank scores its share
            snap.restore(self.model)
            BitConfig(candidates[i]).apply(self.model)
            if cfg.criterion == "hessian":
                mine[i] = hessian_score(self.model, x, y, snap.tensors, lr=cfg.lr, loss_fn=self.loss_fn)
            elif cfg.criterion == "loss":  # the calibration loss it adds
                loss = loss_score(self.model, calib, self.device, self.loss_fn)
                mine[i] = max(loss - base, LOSS_FLOOR) if math.isfinite(loss) else math.inf
            else:
                mine[i] = accuracy_score(self.model, calib, self.device)
            if on_candidate is not None:
                on_candidate(step, i, len(candidates))
        snap.restore(self.model)
        scores: dict[int, float] = {}
        for part in distributed.all_gather(mine):
            scores.update(part)
        return [scores[i] for i in range(len(candidates))]

    def useful_knobs(self, bits: dict[str, dict[str, int]]) -> list[Knob]:
        """The knobs whose lowering brings some target not yet met closer (weights: paper cost, size and
        BitOPs; activations: BitOPs only); every knob when no target is set or budgets are not fitted."""
        cfg = self.cfg
        before = target_values(cfg, self.cost_of(bits))
        unmet = {name for name, (value, limit) in before.items() if not _within(value, limit)}
        if not cfg.fit_budget or not unmet:
            return self.knobs
        useful = []
        for knob in self.knobs:
            after = target_values(cfg, self.cost_of(lowered(bits, knob, 1)))
            if any(after[name][0] < before[name][0] for name in unmet):
                useful.append(knob)
        return useful

    def finetune(self, step: int, on_batch: Callable | None, extra_epochs: int = 0) -> float:
        cfg = self.cfg
        epochs = cfg.finetune_epochs + extra_epochs
        if epochs == 0:
            return math.nan
        optimizer = make_optimizer(self.model, "adam", cfg.lr, cfg.weight_decay)
        steps = epochs * self.data.train_steps()
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        if cfg.compile:  # a fresh compile per step: the step's bits, and no pile of stale guarded graphs
            torch._dynamo.reset()
        net = training_net(self.model, self.device, cfg.compile)
        top1 = math.nan
        for epoch in range(epochs):
            seed = step_seed(cfg.seed, step, Salt.FINETUNE_EPOCH + epoch)
            torch.manual_seed(seed)
            loader = self.data.train_batches(seed)
            top1 = train_one_epoch(net, loader, optimizer, scheduler, self.device, epoch, on_batch,
                                   loss_fn=self.loss_fn)["train_top1"]
        return top1

    def evaluate_row(self, step: int, score: float, train_top1: float, t0: float) -> dict[str, Any]:
        bits = self.bits()
        report = self.cost_of(bits)
        batches = self.data.test_batches()
        health = OutputHealth()
        test = evaluate(maybe_compiled(self.model, self.cfg.compile), batches, self.device, self.loss_fn, health) \
            if batches is not None else \
            {"test_top1": math.nan, "test_top5": math.nan}
        row: dict[str, Any] = {"step": step, "cost": report.paper_cost, "bitops": report.bitops,
                               "bitops_ratio": report.bitops_ratio, "size_bytes": report.size_bytes,
                               "score": score, "train_top1": train_top1, "test_top1": test["test_top1"],
                               "test_top5": test["test_top5"], "wall_s": time.perf_counter() - t0}
        row |= {k.column: bits[k.layer][k.kind] for k in self.knobs}
        if batches is not None and (warned := output_warnings(self.model, health, batches, self.device)):
            row["warnings"] = warned  # printed and kept in the step's checkpoint, not in frontier.csv
        return row

    def save_step(self, step: int, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not distributed.is_main() or self.run_dir is None or self.frontier is None:
            return
        bits = BitConfig.from_model(self.model)
        bits.save(self.run_dir / f"bits-step{step:03d}.json")
        recipe = self.recipe.to_dict() if self.recipe is not None else None
        save_checkpoint(Checkpoint("search", self.model.state_dict(), recipe, bits.to_dict(), self.data_options, row,
                                   self.cfg.to_dict(), step=step), step_checkpoint(self.run_dir, step))
        self.frontier.append(row)  # after the checkpoint: a logged step is always resumable
        bits.save(self.run_dir / "bits.json")

    def choose_step(self, step: int, current: dict[str, dict[str, int]], gen: torch.Generator,
                    on_candidate: CandidateCallback | None) -> tuple[dict[str, dict[str, int]], float] | None:
        """The bits of this step and their score (None when no knob can be lowered).

        ``sets`` (the reference): ``candidates`` random sets of knobs, each lowering ``ratio`` of them, the
        best set by ``objective``. ``table``: every lowerable knob scored alone (a sensitivity table),
        then the ``ratio`` best knobs by the same objective lowered together. With ``fit_budget`` both
        stop lowering as soon as the targets are met."""
        cfg, now = self.cfg, self.cost_of(current)
        if cfg.strategy == "allocate":
            return self.allocate_step(step, current, on_candidate)
        fit = cfg.fit_budget and bool(target_values(cfg, now))
        enough = (lambda c: target_met(cfg, self.cost_of(c))) if fit else None
        pool = self.useful_knobs(current)
        singles = lowerable_knobs(current, pool, cfg.interval, cfg.min_bits)  # the table's rows
        if cfg.strategy == "sets":
            candidates = sample_candidates(current, pool, cfg.candidates, cfg.ratio, cfg.interval, cfg.min_bits,
                                           gen, enough)
        else:
            candidates = [lowered(current, knob, cfg.interval) for knob in singles]
        if not candidates:
            return None
        savings = [budget_progress(cfg, now, self.cost_of(c)) for c in candidates]
        scores = self.score_candidates(step, candidates, on_candidate)
        if cfg.criterion == "random":
            values = torch.rand(len(candidates), generator=gen).tolist()
        else:
            values = objective(scores, savings, cfg.lam)
            if not any(math.isfinite(v) for v in values):
                raise ProqhaError(f"step {step}: every candidate's loss is non-finite; lower --lr")
        order = sorted(range(len(candidates)), key=lambda i: (values[i], i))
        if cfg.strategy == "sets":
            return candidates[order[0]], scores[order[0]]
        bits = current
        taken = []
        for i in order[:max(1, int(cfg.ratio * len(self.knobs)))]:
            if not math.isfinite(values[i]):
                break
            bits = lowered(bits, singles[i], cfg.interval)
            taken.append(scores[i])
            if enough is not None and enough(bits):
                break
        return bits, sum(taken) / len(taken) if taken else math.nan

    def allocate_step(self, step: int, current: dict[str, dict[str, int]], on_candidate: CandidateCallback | None
                      ) -> tuple[dict[str, dict[str, int]], float] | None:
        """``allocate``: measure the calibration loss each knob adds at each lower level (a sensitivity
        table), then give every knob the bits that meet this step's budget with the least summed loss
        (``proqha.search.allocate``). The budget moves from the current cost to the targets in
        ``ceil(1 / ratio)`` steps (ratio 1: at once)."""
        cfg, now = self.cfg, self.cost_of(current)
        remaining = max(1, math.ceil(1 / cfg.ratio) - step + 1)
        limits = {name: value + (limit - value) / remaining if not _within(value, limit) else value
                  for name, (value, limit) in target_values(cfg, now).items()}
        damage = self.sensitivity_table(step, current, on_candidate)
        if not damage:
            return None

        def feasible(bits: dict[str, dict[str, int]]) -> bool:
            values = target_values(cfg, self.cost_of(bits))
            return all(_within(values[name][0], limit) for name, limit in limits.items())

        bits = allocate(current, damage, now, feasible)
        if bits is None:  # nothing meets the budget: every knob at its floor
            bits = {name: dict(kb) for name, kb in current.items()}
            for knob in damage:
                bits[knob.layer][knob.kind] = min(damage[knob])
        return bits, sum(damage[k].get(bits[k.layer][k.kind], math.nan) for k in damage)

    def sensitivity_table(self, step: int, current: dict[str, dict[str, int]],
                          on_candidate: CandidateCallback | None) -> dict[Knob, dict[int, float]]:
        """Per searched knob, the loss the model adds with only that knob at each level from ``min_bits``
        to its current bits (0 at the current level), on the calibration split (``--table-data calib``) or
        the training split (``train``: more images, less noise)."""
        cfg = self.cfg
        calib = self.data.calib_batches() if cfg.table_data == "calib" else list(
            self.data.train_batches(step_seed(cfg.seed, step, Salt.TABLE_BATCHES)))
        snap = Snapshot(self.model)
        base = loss_score(self.model, calib, self.device, self.loss_fn)
        jobs = [(knob, level) for knob in self.knobs
                for level in range(cfg.min_bits, current[knob.layer][knob.kind])]
        table: dict[Knob, dict[int, float]] = {k: {current[k.layer][k.kind]: 0.0} for k in self.knobs
                                               if current[k.layer][k.kind] > cfg.min_bits}
        for i, (knob, level) in enumerate(jobs):
            BitConfig(lowered(current, knob, current[knob.layer][knob.kind] - level)).apply(self.model)
            loss = loss_score(self.model, calib, self.device, self.loss_fn)
            table[knob][level] = max(loss - base, 0.0) if math.isfinite(loss) else math.inf
            if on_candidate is not None:
                on_candidate(step, i, len(jobs))
        snap.restore(self.model)
        return table

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
            torch.manual_seed(step_seed(cfg.seed, step, Salt.CANDIDATES))
            current = self.bits()
            gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, Salt.CANDIDATE_SETS))
            step_choice = self.choose_step(step, current, gen, on_candidate)
            if step_choice is None:
                reason = "floor"
                break
            chosen_bits, chosen_score = step_choice
            BitConfig(chosen_bits).apply(self.model)
            last = step == cfg.steps or target_met(cfg, self.cost_of(chosen_bits))
            train_top1 = self.finetune(step, on_batch, cfg.final_epochs if last else 0)
            row = self.evaluate_row(step, chosen_score, train_top1, t0)
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
    start, source = done[-1] if done else (0, start_checkpoint(Path(cfg.source)))  # no step yet: from the start
    search = ProgressiveSearch.from_checkpoint(cfg, run_dir, source, device)
    main = distributed.is_main()  # under torchrun only rank 0 writes and reports
    if not main:
        on_candidate = on_step = on_batch = None
    if on_start is not None and main:
        on_start(search)
    made_here = not run_dir.exists()
    with run_lock(run_dir) if main else contextlib.nullcontext(), \
            removed_on_error(run_dir, step_checkpoint(run_dir, 0), keep=resume or not main, made_here=made_here):
        if done and main:
            search.frontier.resume_at(start, search.source_metrics)
        elif main:
            search.frontier.path.unlink(missing_ok=True)
            atomic_write_json(run_dir / "config.json", cfg.to_dict() | {"stage": "search",
                                                                        "source_checkpoint": str(source),
                                                                        "recipe": search.recipe.to_dict(),
                                                                        "dataset": search.dataset})
        return search.run(start, on_candidate, on_step, on_batch, fresh=not done)
