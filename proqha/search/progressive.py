"""The progressive search loop (ProQHA): each step chooses lower bits (a registered strategy scoring by a
registered criterion: ``proqha.search.strategies``, ``proqha.search.criteria``), fine-tunes, evaluates and
records the step (``proqha.search.record``). Every step's randomness derives from (seed, step), so a search
resumed from its last completed step gives the same result as an uninterrupted one; step 0 is the start.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from proqha import distributed
from proqha.compiling import maybe_compiled
from proqha.cost import CostReport, FileMeasurer, cost_report
from proqha.data import DataSource
from proqha.errors import OptionError, ProqhaError
from proqha.health import OutputHealth
from proqha.latency_model import FORMAT_BITS, LatencyMeasurer, LatencyModel
from proqha.malloc_tuning import reuse_freed_memory
from proqha.metrics import Metric
from proqha.quant import BitConfig, QuantConfig, switch_on_fixed_quantizers
from proqha.recipe import ModelRecipe, load_model
from proqha.runs import pick_checkpoint, removed_on_error, run_lock
from proqha.search.config import KNOB_KINDS, START_BITS, SearchConfig
from proqha.search.criteria import LOSS_FLOOR, Scoring, criterion_named
from proqha.search.data import DatasetData, SearchData
from proqha.search.frontier import step_checkpoint, step_checkpoints
from proqha.search.knobs import Bits, Knob, lowerable_knobs, lowered, model_knobs
from proqha.search.race import RaceResult, finetune_step
from proqha.search.record import SearchRecord
from proqha.search.scores import Snapshot
from proqha.search.strategies import Choice, strategy_named
from proqha.search.targets import (
    LATENCY_TOLERANCE,
    budget_progress,
    latency_budget_ms,
    latency_over,
    target_met,
    target_values,
    within,
)
from proqha.seeds import Salt, step_seed
from proqha.train import LossFn, evaluate_loader, output_warnings, resolve_device

__all__ = ["LOSS_FLOOR", "CandidateCallback", "ProgressiveSearch", "SearchConfig", "StepCallback", "budget_progress",
           "run_search", "target_met", "target_values"]

CandidateCallback = Callable[[int, int, int], None]  # (step, candidate index, candidates)
StepCallback = Callable[[dict[str, Any]], None]


def starting_bits(model: torch.nn.Module, knobs: list[Knob], cfg: SearchConfig) -> Bits:
    """The bits a search starts from: the model's, a float knob at ``START_BITS``, and with ``fixed_bits``
    the kind not searched at those bits."""
    bits = BitConfig.from_model(model).to_dict()
    for knob in knobs:
        if bits[knob.layer][knob.kind] == 32:
            bits[knob.layer][knob.kind] = START_BITS
    if cfg.fixed_bits is not None:
        fixed = next(kind for kind in ("w", "a") if kind not in KNOB_KINDS[cfg.knobs])
        for layer in {k.layer for k in knobs}:
            bits[layer][fixed] = cfg.fixed_bits
    return bits


class ProgressiveSearch:
    """One search: a quantized model, its data, its strategy and criterion, and the step loop.

    ``from_checkpoint`` builds one from a checkpoint and its dataset (the CLI); the Python API passes the
    caller's model and batches. With ``run_dir`` None nothing is written: the rows stay in ``rows``.
    ``measure_latency`` (``proqha.deploy.latency_table``) measures the start model's latency table and every
    step's graph for a search that needs latency (``SearchConfig.needs_latency``), which fails without it.
    ``measure_file`` (from a caller that may export: ``proqha.export.file_size.measure_file_model``) measures
    the start model's exported file (``source``: the checkpoint it came from, for the file's metadata; as if
    exported from the run's last step checkpoint, whose path the metadata records), from
    which every step's file is predicted (``CostReport.file_bytes``); a search that needs the file
    (``SearchConfig.needs_file``) fails without it, any other leaves the ``file_bytes`` column empty.
    """

    def __init__(self, cfg: SearchConfig, model: torch.nn.Module, data: SearchData, input_size: tuple[int, ...],
                 device: torch.device, run_dir: Path | None = None, recipe: ModelRecipe | None = None,
                 dataset: str = "", data_options: dict[str, Any] | None = None,
                 source_metrics: dict[str, Any] | None = None, loss_fn: LossFn | None = None,
                 measure_file: FileMeasurer | None = None, source: Path | None = None,
                 measure_latency: LatencyMeasurer | None = None, metric: Metric | None = None) -> None:
        self.cfg, self.device = cfg, device
        self.metric = metric  # what the final race ranks by and the frontier's test_metric (API: metric=)
        if device.type == "cpu":  # the loss tables evaluate hundreds of times before any fine-tuning
            reuse_freed_memory()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.model, self.data, self.input_size = model.to(device), data, tuple(input_size)
        self.recipe, self.dataset, self.loss_fn = recipe, dataset, loss_fn
        self.data_options = data_options or {}
        self.source_metrics: dict[str, Any] = source_metrics or {}
        self.rows: list[dict[str, Any]] = []
        self.strategy, self.criterion = strategy_named(cfg.strategy), criterion_named(cfg.criterion)
        self.knobs = model_knobs(self.model, cfg.knobs)
        if not self.knobs:
            name = recipe.arch if recipe is not None else type(model).__name__
            raise ProqhaError(f"{name} has no searchable layers (edge layers only)")
        BitConfig(starting_bits(self.model, self.knobs, cfg)).apply(self.model)
        self.base_cost = cost_report(self.model, self.input_size)
        if measure_file is not None and cfg.needs_file:
            exported_as = (step_checkpoint(self.run_dir, cfg.steps), cfg.steps) if self.run_dir is not None else None
            self.base_cost = replace(self.base_cost, file_model=measure_file(self.model, self.input_size, source,
                                                                             exported_as))
        elif cfg.needs_file:
            raise ProqhaError("target_file_kb and cost_metric 'file' predict the exported file from one the start "
                              "model is exported to: this search was given no file measurer")
        self.latency = measure_latency if cfg.needs_latency else None
        self.reference: torch.nn.Module | None = None  # the uniform 8-bit graph a latency ratio is timed beside
        if self.latency is not None:
            self.base_cost = replace(self.base_cost, latency_model=self.latency_table())
            self.check_latency_budget()
        elif cfg.needs_latency:
            raise ProqhaError("target_latency_ms, target_latency_ratio and cost_metric 'latency' predict latency "
                              "from a table measured on an engine: this search was given no latency measurer")
        self.counted_knobs = self.metric_knobs()
        self.record = SearchRecord(self.run_dir, self.knobs, cfg, recipe.to_dict() if recipe is not None else None,
                                   self.data_options) if self.run_dir is not None else None

    @classmethod
    def from_checkpoint(cls, cfg: SearchConfig, run_dir: Path, source: Path, device: torch.device,
                        measure_file: FileMeasurer | None = None, measure_latency: LatencyMeasurer | None = None
                        ) -> "ProgressiveSearch":
        """The search of a checkpoint: its model rebuilt from the recipe, its training run's dataset."""
        model, state = load_model(source, device)
        recipe = ModelRecipe.from_dict(state.recipe)
        if recipe.float_run:  # a float run enters the search at START_BITS, all of it
            recipe = replace(recipe, quant={**recipe.quant, "bits": START_BITS})
            switch_on_fixed_quantizers(model, QuantConfig(**recipe.quant))
        images = DataSource.from_dict(state.data)  # the training run's images, at its size
        data = DatasetData(images.load("train"), images.load("calib"), images.load("test"), cfg.batch_size,
                           cfg.workers)
        return cls(cfg, model, data, recipe.input_size, device, run_dir, recipe, images.dataset,
                   images.to_dict(), state.metrics, measure_file=measure_file, source=source,
                   measure_latency=measure_latency)

    def latency_table(self) -> LatencyModel:
        """The start model's latency table, with the uniform 8-bit graph's latency on its clock (``reference_ms``:
        the start graph's, unless the search resumes from lower bits, when that graph is timed beside the start
        graph). With ``target_latency_ratio`` the search keeps a copy of the model at those bits
        (``reference``), beside which every graph is timed."""
        table = self.latency.table(self.model, self.input_size)
        bits = self.bits()
        for knob in self.knobs:
            bits[knob.layer][knob.kind] = START_BITS
        resumed = bits != self.bits()
        if self.cfg.target_latency_ratio is None and not resumed:
            return table  # no copy needed: the start graph is the uniform 8-bit one
        reference = copy.deepcopy(self.model).cpu()
        BitConfig(bits).apply(reference)
        if self.cfg.target_latency_ratio is not None:
            self.reference = reference
        if not resumed:
            return table
        ms, ref = self.latency.graph_ms_beside(self.model, reference, self.input_size)
        return replace(table, reference_ms=table.base_ms * ref / ms)

    def check_latency_budget(self) -> None:
        """Refuse a latency target more than ``LATENCY_TOLERANCE`` under the fastest graph measured: the start
        graph, or the graph with every layer at the format its table finds fastest (timed once here). A sum of
        table deltas is no bound (each is a difference of two noisy timings), and a search under such a budget
        would only lower bits on that noise."""
        table, budget = self.base_cost.latency_model, latency_budget_ms(self.cfg, self.base_cost)
        if budget is None:
            return
        fastest = copy.deepcopy(self.model).cpu()
        bits = self.bits()
        for name, fmt in table.fastest_formats().items():
            if fmt != table.start[name]:
                bits[name] = dict(zip("wa", FORMAT_BITS[fmt]))
        BitConfig(bits).apply(fastest)
        floor = min(table.base_ms, self.time_graph(fastest)[1] * table.reference)
        if budget >= floor * (1 - LATENCY_TOLERANCE):
            return
        option = "target_latency_ratio" if self.cfg.target_latency_ratio is not None else "target_latency_ms"
        raise OptionError(option, f"{getattr(self.cfg, option):g} is more than {LATENCY_TOLERANCE:.0%} under the "
                                  f"fastest graph measured on {self.cfg.latency_engine}: {floor:.4g} ms, "
                                  f"{floor / table.reference:.3f}x the uniform 8-bit graph's {table.reference:.4g} ms "
                                  "(the start, or every layer at the format its latency table finds fastest)")

    def time_graph(self, model: torch.nn.Module) -> tuple[float, float]:
        """``model``'s whole graph timed on the latency engine: its ms, and its latency over the uniform 8-bit
        graph's (with ``target_latency_ratio`` timed beside it, so a drift of the machine moves both alike; else
        over the table's ``reference``)."""
        if self.reference is None:
            ms = self.latency.graph_ms(model, self.input_size)
            return ms, ms / self.base_cost.latency_model.reference
        ms, ref = self.latency.graph_ms_beside(model, self.reference, self.input_size)
        return ms, ms / ref

    # -- pieces of a step -------------------------------------------------------------------------
    def bits(self) -> Bits:
        return BitConfig.from_model(self.model).to_dict()

    def cost_of(self, bits: Bits) -> CostReport:
        return self.base_cost.with_bits(bits)

    def scoring(self, step: int) -> Scoring:
        """What the criterion scores step ``step``'s candidates with (the model as it stands, the step's batch)."""
        snapshot = Snapshot(self.model)
        x, y = self.data.scoring_batch(step_seed(self.cfg.seed, step, Salt.SCORING_BATCH))
        calib = self.data.calib_batches() if self.criterion.needs_calib else None
        return Scoring(self.model, self.device, snapshot, x.to(self.device), y.to(self.device), self.cfg.lr,
                       self.loss_fn, calib)

    def score_candidates(self, step: int, candidates: list[Bits], on_candidate: CandidateCallback | None
                         ) -> list[float]:
        """The criterion's score of each candidate (NaN for the random control)."""
        progress = (lambda i, n: on_candidate(step, i, n)) if on_candidate is not None else None
        return self.criterion.score_all(lambda: self.scoring(step), candidates, progress)

    def metric_knobs(self) -> list[Knob]:
        """The knobs whose lowering from the start to ``min_bits`` lowers the cost metric (every knob if none)."""
        start, metric = self.bits(), self.cfg.cost_metric
        base = self.base_cost.metric(metric)
        counted = [k for k in self.knobs
                   if self.cost_of(lowered(start, k, start[k.layer][k.kind] - self.cfg.min_bits)).metric(metric) < base]
        return counted or self.knobs

    def can_lower(self, bits: Bits) -> bool:
        """Whether a next step could lower some useful knob of ``bits``: by ``interval`` (the table and reference
        strategies), or to any level down to ``min_bits`` (the allocation, which moves a knob to any level: a
        file budget's 4-bit weights still go to 2 where 4 to 3 saves nothing)."""
        if self.cfg.strategy == "allocate":
            return bool(lowerable_knobs(bits, self.useful_knobs(bits, to_floor=True), 1, self.cfg.min_bits))
        return bool(lowerable_knobs(bits, self.useful_knobs(bits), self.cfg.interval, self.cfg.min_bits))

    def useful_knobs(self, bits: Bits, to_floor: bool = False) -> list[Knob]:
        """The knobs whose lowering by ``interval`` (``to_floor``: to ``min_bits``, the most a level can save)
        brings some target not yet met closer (weights: paper cost, size, BitOPs, and the file where the
        weights' stored width narrows, not 8 to 7 bit in int8; activations: BitOPs only). With no target, the
        knobs the cost metric counts: under the paper cost or the file, weights only, since a sub-8-bit
        activation saves neither and costs an integer clamp on every CPU engine. Every knob when budgets are
        not fitted (the reference)."""
        cfg = self.cfg
        if not cfg.fit_budget:
            return self.knobs
        before = target_values(cfg, self.cost_of(bits))
        if not before:
            return self.counted_knobs
        unmet = {name for name, (value, limit) in before.items() if not within(value, limit)}
        if not unmet:
            return self.knobs
        useful = []
        for knob in self.knobs:
            drop = bits[knob.layer][knob.kind] - cfg.min_bits if to_floor else cfg.interval
            if to_floor and drop <= 0:
                continue
            after = target_values(cfg, self.cost_of(lowered(bits, knob, drop)))
            if any(after[name][0] < before[name][0] for name in unmet):
                useful.append(knob)
        return useful

    def pays(self, bits: Bits) -> Callable[[Knob, int], bool]:
        """Whether lowering a knob alone from ``bits`` to a level lowers some configured target (every level
        with none): 5 to 7 weight bits are stored as int8 and leave the file where it is, and under a latency
        budget a narrower activation only adds an integer clamp. A layer at float is checked as it would
        return to int8 (its other knob at 8 bit), since one knob leaving float alone changes no kernel."""
        before = target_values(self.cfg, self.cost_of(bits))

        def lowers(knob: Knob, level: int) -> bool:
            if not before:
                return True
            trial = {name: dict(kb) for name, kb in bits.items()}
            trial[knob.layer][knob.kind] = level
            other = "a" if knob.kind == "w" else "w"
            trial[knob.layer][other] = min(trial[knob.layer][other], START_BITS)
            after = target_values(self.cfg, self.cost_of(trial))
            return any(after[name][0] < value for name, (value, _) in before.items())

        return lowers

    def choose_step(self, step: int, current: Bits, gen: torch.Generator, on_candidate: CandidateCallback | None
                    ) -> Choice | None:
        """The bits of this step and their score, by the configured strategy (None: no knob can be lowered)."""
        return self.strategy.choose(self, step, current, gen, on_candidate)

    def evaluate_row(self, step: int, score: float, tuned: RaceResult | None, t0: float) -> dict[str, Any]:
        """The step's frontier row: its costs, score, accuracies, fine-tuning (epochs, the final race's
        winner and margin), wall time and every knob's bits."""
        bits = self.bits()
        report = self.cost_of(bits)
        batches = self.data.test_batches()
        health = OutputHealth()
        test = evaluate_loader(maybe_compiled(self.model, self.cfg.compile), batches, self.device, self.loss_fn, health,
                               self.metric) if batches is not None else \
            {"test_top1": math.nan, "test_top5": math.nan}
        row: dict[str, Any] = {"step": step, "cost": report.paper_cost, "bitops": report.bitops,
                               "bitops_ratio": report.bitops_ratio, "size_bytes": report.size_bytes,
                               "file_bytes": report.file_bytes if report.file_model is not None else math.nan,
                               **self.latency_columns(report),
                               "score": score, "train_top1": tuned.train_top1 if tuned else math.nan,
                               "test_top1": test["test_top1"], "test_top5": test["test_top5"],
                               "test_metric": test.get("test_metric", math.nan),
                               "epochs": tuned.epochs if tuned else 0, "selected": tuned.selected if tuned else "",
                               "selected_margin": tuned.margin if tuned else math.nan,
                               "wall_s": time.perf_counter() - t0}
        row |= {k.column: bits[k.layer][k.kind] for k in self.knobs}
        if tuned is not None and tuned.rounds:
            row["race"] = tuned.rounds  # kept in the step's checkpoint, not in frontier.csv
        warned = output_warnings(self.model, health, batches, self.device) if batches is not None else []
        if latency_over(self.cfg, row["latency_ms"], row["latency_ratio"]):
            measured, budget = ((f"{row['latency_ratio']:.3f}x the uniform 8-bit graph timed beside it",
                                 f"{self.cfg.target_latency_ratio:g}x") if self.reference is not None else
                                (f"{row['latency_ms']:.4g} ms", f"{self.cfg.target_latency_ms:.4g} ms"))
            warned = [*warned, f"the graph measured {measured}, over the latency budget {budget} by more than "
                               f"{LATENCY_TOLERANCE:.0%} (the table predicted {row['latency_ms_pred']:.4g} ms); "
                               "time it on an idle machine"]
        if warned:
            row["warnings"] = warned  # printed and kept in the step's checkpoint, not in frontier.csv
        return row

    def latency_columns(self, report: CostReport) -> dict[str, float]:
        """With a latency table: the predicted latency of the model's bits, the measured one of its whole graph,
        its ratio to the uniform 8-bit graph (``time_graph``) and the prediction's relative error (against the
        measured ratio on the table's clock); else NaN each."""
        if self.latency is None:
            return {"latency_ms_pred": math.nan, "latency_ms": math.nan, "latency_ratio": math.nan,
                    "latency_err": math.nan}
        predicted, (measured, ratio) = report.latency_ms, self.time_graph(self.model)
        return {"latency_ms_pred": predicted, "latency_ms": measured, "latency_ratio": ratio,
                "latency_err": predicted / (ratio * report.latency_model.reference) - 1}

    def save_step(self, step: int, row: dict[str, Any]) -> None:
        """Keep the step's row; with a run folder, the main rank records the step's files."""
        self.rows.append(row)
        if self.record is not None and distributed.is_main():
            self.record.save_step(step, self.model, row)

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, start_step: int, on_candidate: CandidateCallback | None = None,
            on_step: StepCallback | None = None, on_batch: Callable | None = None, fresh: bool = True
            ) -> dict[str, Any]:
        """Steps ``start_step + 1`` onwards; a ``fresh`` run first records step 0 (the starting point)."""
        cfg = self.cfg
        if fresh:
            self._finish_step(0, math.nan, None, time.perf_counter(), on_step)
        reason, last_step = "steps", start_step
        if target_met(cfg, self.cost_of(self.bits())) and not (fresh and self.spends_slack()):
            return {"stopped": "target", "steps": start_step, "run_dir": self._run_dir_text()}
        for step in range(start_step + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            torch.manual_seed(step_seed(cfg.seed, step, Salt.CANDIDATES))
            current = self.bits()
            spending = target_met(cfg, self.cost_of(current))  # a budget met: this step spends what is left
            gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, Salt.CANDIDATE_SETS))
            step_choice = self.choose_step(step, current, gen, on_candidate)
            if step_choice is None:
                reason = "floor"
                break
            if spending and step_choice.bits == current:  # nothing more fits the budget
                reason = "target"
                break
            BitConfig(step_choice.bits).apply(self.model)
            met = spending or target_met(cfg, self.cost_of(step_choice.bits))  # spent: the step measured fits
            floor = not self.can_lower(step_choice.bits)  # then this step is the last as well
            epochs = cfg.finetune_epochs + (cfg.final_epochs if met or floor or step == cfg.steps else 0)
            tuned = finetune_step(self, step, step_choice, epochs, met and cfg.select_final, on_batch)
            self._finish_step(step, step_choice.score, tuned, t0, on_step)
            last_step = step
            if spending or target_met(cfg, self.cost_of(self.bits())):  # a step that spends slack is the last
                reason = "target"
                break
            if floor and step < cfg.steps:
                reason = "floor"
                break
        return {"stopped": reason, "steps": last_step, "run_dir": self._run_dir_text()}

    def spends_slack(self) -> bool:
        """Whether a start that meets every target still takes a step: the allocate strategy with float as a
        level (a latency budget), which raises layers to float while the budget allows."""
        return self.cfg.strategy == "allocate" and self.cfg.needs_latency

    def _finish_step(self, step: int, score: float, tuned: RaceResult | None, t0: float,
                     on_step: StepCallback | None) -> None:
        row = self.evaluate_row(step, score, tuned, t0)
        self.save_step(step, row)
        if on_step is not None:
            on_step(row)

    def _run_dir_text(self) -> str | None:
        return str(self.run_dir) if self.run_dir is not None else None

    def run_in_folder(self, start_step: int = 0, resumed: bool = False, source: Path | None = None,
                      on_candidate: CandidateCallback | None = None, on_step: StepCallback | None = None,
                      on_batch: Callable | None = None, keep_on_error: bool = False) -> dict[str, Any]:
        """``run`` with the run folder (if any) locked and recorded: a fresh run writes its ``config.json``
        (``source``: the checkpoint it started from), a ``resumed`` one trims its frontier to ``start_step``.
        A fresh run that fails before its step 0 is saved leaves no files behind (unless ``keep_on_error``)."""
        folder, main = self.run_dir, distributed.is_main()  # under torchrun only rank 0 writes
        if folder is None or self.record is None:
            return self.run(start_step, on_candidate, on_step, on_batch, fresh=not resumed)
        made_here = not folder.exists()
        with run_lock(folder) if main else contextlib.nullcontext(), \
                removed_on_error(folder, step_checkpoint(folder, 0), keep=keep_on_error or resumed or not main, made_here=made_here):
            if resumed and main:
                self.record.resume_at(start_step, self.source_metrics)
            elif main:
                self.record.start(self.input_size, self.dataset, source)
            return self.run(start_step, on_candidate, on_step, on_batch, fresh=not resumed)


def run_search(cfg: SearchConfig, run_dir: Path, resume: bool = False,
               on_candidate: CandidateCallback | None = None, on_step: StepCallback | None = None,
               on_batch: Callable | None = None, on_start: Callable[[ProgressiveSearch], None] | None = None,
               measure_file: FileMeasurer | None = None, measure_latency: LatencyMeasurer | None = None
               ) -> dict[str, Any]:
    """Run (or with ``resume``, continue) a search of ``cfg`` in ``run_dir``.

    Returns ``{"stopped": "steps" | "target" | "floor", "steps": last completed step, "run_dir": ...}``.
    Everything is validated before anything is written; the run directory is locked while searching.
    A resume before any completed step starts over from ``cfg.source``. ``measure_file``: how the start
    model's exported file is measured (``ProgressiveSearch``), needed by a file target; ``measure_latency``:
    how latency is measured (``proqha.latency_model.LatencyMeasurer``), needed by a latency target.
    """
    run_dir = Path(run_dir)
    distributed.setup()
    device = distributed.local_device(resolve_device(cfg.device))
    done = step_checkpoints(run_dir) if resume else []
    start, source = done[-1] if done else (0, pick_checkpoint(cfg.source, start_option="source").checkpoint)  # no step yet: from the start
    main = distributed.is_main()  # under torchrun only rank 0 writes and reports
    with removed_on_error(run_dir, step_checkpoint(run_dir, 0), keep=resume or not main,
                          made_here=not run_dir.exists()):  # a refused start leaves no latency table behind
        search = ProgressiveSearch.from_checkpoint(cfg, run_dir, source, device, measure_file, measure_latency)
    if not main:
        on_candidate = on_step = on_batch = None
    if on_start is not None and main:
        on_start(search)
    return search.run_in_folder(start, bool(done), source, on_candidate, on_step, on_batch, keep_on_error=resume)
