"""How a search step chooses its bits, in a registry (``@strategy(name)`` fills ``STRATEGY_TABLE``):

- ``sets`` (the reference): ``candidates`` random sets of knobs, each lowering ``ratio`` of them; the best set;
- ``table``: every lowerable knob scored alone, then the ``ratio`` best lowered together;
- ``allocate``: a loss table per knob and level, then the knapsack of ``proqha.search.allocate``.

A strategy returns the step's bits and score, or None when no knob can be lowered. The names are declared
once, as ``SearchConfig.strategy``'s choices."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NamedTuple

import torch

from proqha.errors import ProqhaError
from proqha.quant.grid import FULL_PRECISION
from proqha.search.allocate import Damage, allocate, allocations, summed_damage
from proqha.search.config import SearchConfig
from proqha.search.criteria import criterion_named
from proqha.search.knobs import Bits, lowerable_knobs, lowered, sample_candidates
from proqha.search.latency_fit import fit_measured
from proqha.search.sensitivity import damage_table
from proqha.search.targets import budget_progress, latency_budget_ms, target_met, target_values, within
from proqha.search.uniform import uniform_bits
from proqha.seeds import Salt, step_seed

if TYPE_CHECKING:
    from proqha.cost import CostReport
    from proqha.search.progressive import CandidateCallback, ProgressiveSearch


class Choice(NamedTuple):
    """A step's bits, their score, and the strategy's runners-up (next-best bits, best first), which the
    final race (``proqha.search.race``) tries beside them; ``labels``: what to call the bits and each
    runner-up there (empty: the strategy's name, then "name #2", "name #3", ...)."""

    bits: Bits
    score: float
    alternatives: tuple[Bits, ...] = ()
    labels: tuple[str, ...] = ()


Choose = Callable[["ProgressiveSearch", int, Bits, torch.Generator, "CandidateCallback | None"], "Choice | None"]


@dataclass(frozen=True)
class Strategy:
    """A registered way to choose a step's bits. ``uses_calib(cfg)``: its own measurements (beyond the
    criterion's) need the calibration data; ``label``: what measures them, in messages."""

    name: str
    choose: Choose
    uses_calib: Callable[[SearchConfig], bool] = lambda cfg: False
    label: str = ""


STRATEGY_TABLE: dict[str, Strategy] = {}


def strategy(name: str, uses_calib: Callable[[SearchConfig], bool] | None = None, label: str = ""
             ) -> Callable[[Choose], Choose]:
    """Register a step chooser under ``name`` (a ``SearchConfig.strategy`` choice)."""

    def register(choose: Choose) -> Choose:
        STRATEGY_TABLE[name] = Strategy(name, choose, uses_calib or (lambda cfg: False), label or f"strategy {name!r}")
        return choose

    return register


def strategy_named(name: str) -> Strategy:
    """The registered strategy ``name`` (a resolved config's: never "auto")."""
    if name not in STRATEGY_TABLE:
        raise ProqhaError(f"strategy must be one of {', '.join(STRATEGY_TABLE)}, got {name!r}")
    return STRATEGY_TABLE[name]


def _budget_met(search: ProgressiveSearch, current: Bits) -> Callable[[Bits], bool] | None:
    """With ``fit_budget`` and a target set, whether some bits meet every target; else None (never stop)."""
    cfg = search.cfg
    if not (cfg.fit_budget and target_values(cfg, search.cost_of(current))):
        return None
    return lambda bits: target_met(cfg, search.cost_of(bits))


def _ranked(search: ProgressiveSearch, step: int, current: Bits, candidates: list[Bits], gen: torch.Generator,
            on_candidate: CandidateCallback | None) -> tuple[list[float], list[float], list[int]]:
    """The candidates' scores, ranking values, and indices best first (by value, then index)."""
    cfg, now = search.cfg, search.cost_of(current)
    savings = [budget_progress(cfg, now, search.cost_of(c)) for c in candidates]
    scores = search.score_candidates(step, candidates, on_candidate)
    values = search.criterion.rank(scores, savings, cfg.lam, gen, step)
    return scores, values, sorted(range(len(candidates)), key=lambda i: (values[i], i))


@strategy("sets")
def sets_step(search: ProgressiveSearch, step: int, current: Bits, gen: torch.Generator,
              on_candidate: CandidateCallback | None) -> Choice | None:
    """The reference's step: random sets of knobs, each lowering ``ratio`` of them; the best set."""
    cfg = search.cfg
    enough = _budget_met(search, current)
    candidates = sample_candidates(current, search.useful_knobs(current), cfg.candidates, cfg.ratio, cfg.interval,
                                   cfg.min_bits, gen, enough)
    if not candidates:
        return None
    scores, _, order = _ranked(search, step, current, candidates, gen, on_candidate)
    return Choice(candidates[order[0]], scores[order[0]])


@strategy("table")
def table_step(search: ProgressiveSearch, step: int, current: Bits, gen: torch.Generator,
               on_candidate: CandidateCallback | None) -> Choice | None:
    """Every lowerable knob scored alone; the ``ratio`` best (by the same objective) lowered together,
    stopping early once the targets are met (``fit_budget``)."""
    cfg = search.cfg
    enough = _budget_met(search, current)
    useful = search.useful_knobs(current)
    singles = lowerable_knobs(current, useful, cfg.interval, cfg.min_bits)
    candidates = [lowered(current, knob, cfg.interval) for knob in singles]
    if not candidates:
        return None
    scores, values, order = _ranked(search, step, current, candidates, gen, on_candidate)
    bits, taken = current, []
    for i in order[:max(1, int(cfg.ratio * len(useful)))]:  # as the sets: a ratio of the knobs that count
        if not math.isfinite(values[i]):
            break
        bits = lowered(bits, singles[i], cfg.interval)
        taken.append(scores[i])
        if enough is not None and enough(bits):
            break
    return Choice(bits, sum(taken) / len(taken) if taken else math.nan)


@strategy("allocate", uses_calib=lambda cfg: cfg.table_data == "calib", label="the budget allocation")
def allocate_step(search: ProgressiveSearch, step: int, current: Bits, gen: torch.Generator,
                  on_candidate: CandidateCallback | None) -> Choice | None:
    """Measure the loss each knob adds at each lower level (``sensitivity_table``), then give every knob
    the bits that meet this step's budget with the least summed loss. The budget moves from the current
    cost to the targets in ``ceil(1 / ratio)`` steps (ratio 1: at once); from a start that meets every
    target (a latency budget above the start graph's), the step spends the targets' slack at once, and a
    latency budget's choice is then fitted by measuring the whole graph (``fit_measured``)."""
    cfg, now = search.cfg, search.cost_of(current)
    remaining = max(1, math.ceil(1 / cfg.ratio) - step + 1)
    values = target_values(cfg, now)
    spend = all(within(value, limit) for value, limit in values.values())  # every target met: spend the slack
    limits = {name: limit if spend else value + (limit - value) / remaining if not within(value, limit) else value
              for name, (value, limit) in values.items()}
    damage = sensitivity_table(search, step, current, on_candidate)
    if not damage:
        return None

    def feasible(bits: Bits) -> bool:
        values = target_values(cfg, search.cost_of(bits))
        return all(within(values[name][0], limit) for name, limit in limits.items())

    found = allocations(current, damage, now, feasible, 1)
    labels: list[str] = []
    if found and target_met(cfg, search.cost_of(found[0])):  # the last step
        if cfg.uniform_floor and (floors := uniform_floored(search, current, damage, now, feasible)):
            labels, found = [label for label, _ in floors], [bits for _, bits in floors]
        elif cfg.select_final:  # the runners-up
            found = allocations(current, damage, now, feasible, cfg.select_candidates)
    budget_ms = latency_budget_ms(cfg, search.base_cost)
    if found and spend and budget_ms is not None:  # the table's choice, fitted by measurement
        found[0] = fit_measured(search, found[0], current, damage, budget_ms)
    if not found:  # nothing meets the budget: every knob at its floor
        bits = {name: dict(kb) for name, kb in current.items()}
        for knob in damage:
            bits[knob.layer][knob.kind] = min(damage[knob])
        found = [bits]
    return Choice(found[0], sum(damage[k].get(found[0][k.layer][k.kind], math.nan) for k in damage),
                  tuple(found[1:]), tuple(labels))


def uniform_floored(search: ProgressiveSearch, current: Bits, damage: Damage, now: CostReport,
                    feasible: Callable[[Bits], bool]) -> list[tuple[str, Bits]]:
    """Per maximal uniform configuration within the targets (``uniform_bits``), the allocation with the least
    damage that keeps every knob at or above it (it spends what the uniform bits leave of the budget), least
    summed damage first, labelled "allocate >= uniform WwAa": a search that ends at one of them is never
    below uniform bits layer by layer."""
    floors = []
    for label, bits in uniform_bits(search, current):
        found = allocate(current, damage, now, feasible, floor=bits)
        if found is not None and all(found != other for _, _, other in floors):
            floors.append((summed_damage(found, damage), f"{search.strategy.name} >= {label}", found))
    return [(label, bits) for _, label, bits in sorted(floors, key=lambda f: f[0])]


def sensitivity_table(search: ProgressiveSearch, step: int, current: Bits, on_candidate: CandidateCallback | None
                      ) -> Damage:
    """Per searched knob, the loss the model adds with only that knob at each level from ``min_bits`` to its
    current bits (0 at the current level; ``sensitivity.damage_table``), on the calibration split
    (``table_data`` "calib") or the training split ("train": more images, less noise)."""
    cfg, data = search.cfg, search.data
    batches = data.calib_batches() if cfg.table_data == "calib" else list(
        data.train_batches(step_seed(cfg.seed, step, Salt.TABLE_BATCHES)))
    progress = (lambda done, jobs: on_candidate(step, done - 1, jobs)) if on_candidate is not None else None
    return damage_table(search.model, current, search.knobs, cfg.min_bits, batches, search.device, search.loss_fn,
                        progress, above=(FULL_PRECISION,) if cfg.needs_latency else (),
                        pays=search.pays(current))


def calibration_user(cfg: SearchConfig) -> str | None:
    """What in a resolved search measures on calibration data (for a message), or None."""
    chosen = strategy_named(cfg.strategy)
    if chosen.uses_calib(cfg):
        return chosen.label
    return f"criterion {cfg.criterion!r}" if criterion_named(cfg.criterion).needs_calib else None
