"""The final race, so that a search never ends below uniform bits: at the step that meets the targets, the
strategy's bits race its next-best bits and the uniform bits that meet the same targets. Each entrant is a
copy of the model at its bits, fine-tuned on the step's own schedule and batches (``FineTune``); after every
``select_epochs`` the entrants are scored on the calibration split (never the test split) and the worse
half leaves (successive halving). The winner trains on to the step's last epoch, so it ends exactly where
training it alone would have, and the model takes its weights and bits."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from proqha.errors import ProqhaError
from proqha.quant import BitConfig
from proqha.search.config import KNOB_KINDS, START_BITS
from proqha.search.finetune import FineTune
from proqha.search.knobs import Bits
from proqha.search.strategies import Choice
from proqha.search.targets import target_met
from proqha.train import evaluate_loader

if TYPE_CHECKING:
    from proqha.search.progressive import ProgressiveSearch


@dataclass
class Entrant:
    """One configuration in the race: its label, bits, model copy and fine-tuning runner."""

    label: str
    bits: Bits
    model: nn.Module
    tune: FineTune
    calib: dict[str, float] = field(default_factory=dict)

    def rank_key(self) -> tuple[float, float]:
        return -self.calib["test_top1"], self.calib["test_loss"]


@dataclass
class RaceResult:
    """What the step's fine-tuning did: the winner's label, its calibration top-1 over the runner-up's
    in the last round (NaN without a race), every round's standings, all epochs trained, train top-1."""

    selected: str
    margin: float
    rounds: list[list[dict[str, Any]]]
    epochs: int
    train_top1: float


def uniform_bits(search: ProgressiveSearch, base: Bits) -> list[tuple[str, Bits]]:
    """The uniform configurations that meet the targets and are maximal (no other feasible uniform one has
    at least as many bits on both kinds), most BitOPs first: every searched knob at W w / A a bits."""
    cfg = search.cfg
    kinds = KNOB_KINDS[cfg.knobs]
    levels = range(cfg.min_bits, START_BITS + 1)
    w_levels = list(levels) if "w" in kinds else [0]
    a_levels = list(levels) if "a" in kinds else [0]

    def config(w: int, a: int) -> Bits:
        bits = {name: dict(kb) for name, kb in base.items()}
        for knob in search.knobs:
            bits[knob.layer][knob.kind] = w if knob.kind == "w" else a
        return bits

    feasible = [(w, a) for w in w_levels for a in a_levels if target_met(cfg, search.cost_of(config(w, a)))]
    maximal = [p for p in feasible if not any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in feasible)]
    maximal.sort(key=lambda p: (-max(p[0], 1) * max(p[1], 1), -p[0]))
    return [("uniform " + "".join(f"{k.upper()}{v}" for k, v in zip("wa", p) if k in kinds), config(*p))
            for p in maximal]


def entrants(search: ProgressiveSearch, choice: Choice) -> list[tuple[str, Bits]]:
    """The race's configurations, at most ``select_candidates``, all distinct: the strategy's bits first,
    then the uniform ones, then the strategy's runners-up."""
    name = search.strategy.name
    field_ = [(name, choice.bits)] + uniform_bits(search, choice.bits) + [
        (f"{name} #{i}", bits) for i, bits in enumerate(choice.alternatives, start=2)]
    distinct: list[tuple[str, Bits]] = []
    for label, bits in field_:
        if all(bits != other for _, other in distinct):
            distinct.append((label, bits))
    return distinct[:search.cfg.select_candidates]


def has_calib(search: ProgressiveSearch) -> bool:
    try:
        search.data.calib_batches()
    except ProqhaError:
        return False
    return True


def finetune_step(search: ProgressiveSearch, step: int, choice: Choice, epochs: int, race: bool,
                  on_batch: Callable | None) -> RaceResult:
    """Fine-tune step ``step`` for ``epochs``; with ``race`` (and more than one entrant and calibration
    data) through the final race. ``search.model`` ends at the winner's bits and weights."""
    field_ = entrants(search, choice) if race and epochs > 0 and has_calib(search) else []
    if len(field_) < 2:
        tune = FineTune(search.model, search.cfg, search.data, search.device, step, epochs, search.loss_fn)
        return RaceResult(search.strategy.name, math.nan, [], epochs, tune.run_to(epochs, on_batch))
    cfg = search.cfg
    racers = []
    for label, bits in field_:
        model = copy.deepcopy(search.model)
        BitConfig(bits).apply(model)
        racers.append(Entrant(label, bits, model,
                              FineTune(model, cfg, search.data, search.device, step, epochs, search.loss_fn)))
    alive, rounds, upto = racers, [], 0
    while len(alive) > 1 and upto < epochs:
        upto = min(upto + cfg.select_epochs, epochs)
        for racer in alive:
            racer.tune.run_to(upto, on_batch)
            racer.calib = evaluate_loader(racer.model, search.data.calib_batches(), search.device, search.loss_fn)
        alive = sorted(alive, key=Entrant.rank_key)  # stable: on a tie the earlier entrant stays ahead
        rounds.append([{"label": r.label, "epochs": upto, "calib_top1": r.calib["test_top1"],
                        "calib_loss": r.calib["test_loss"]} for r in alive])
        margin = alive[0].calib["test_top1"] - alive[1].calib["test_top1"]
        alive = alive[:max(1, len(alive) // 2)] if upto < epochs else alive[:1]
    winner = alive[0]
    train_top1 = winner.tune.run_to(epochs, on_batch)
    search.model.load_state_dict(winner.model.state_dict())
    BitConfig(winner.bits).apply(search.model)
    return RaceResult(winner.label, margin, rounds, sum(r.tune.done for r in racers), train_top1)
