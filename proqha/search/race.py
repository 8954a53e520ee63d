"""The final race, so that a search never ends below uniform bits: at the step that meets the targets, the
strategy's bits race its next-best bits and the uniform bits that meet the same targets (a uniform
configuration that one of the strategy's dominates, with at least its bits on every knob, does not race).
Each entrant is a copy of the model at its bits, fine-tuned on the step's own schedule and batches
(``FineTune``); after every ``select_epochs`` the entrants are scored on the calibration split (never the
test split) and the worse half leaves (successive halving). They are ranked by calibration loss, or by the
search's metric where it has one: after one epoch of a low-bit fine-tune, top-1 on a few thousand images
ranks two configurations against their final order, where the loss already ranks them as the test split
does at the end (digits_hard, seeds 2 and 4 at 3 bit: ``benchmarks/search_quality.py``). The winner trains
on to the step's last epoch, so it ends exactly where training it alone would have, and the model takes
its weights and bits."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from proqha.errors import ProqhaError
from proqha.quant import BitConfig
from proqha.search.finetune import FineTune
from proqha.search.knobs import Bits
from proqha.search.strategies import Choice
from proqha.search.uniform import dominates, uniform_bits
from proqha.train import evaluate_loader

if TYPE_CHECKING:
    from proqha.search.progressive import ProgressiveSearch


def calib_score(calib: dict[str, float]) -> float:
    """What the race ranks by, higher better: the search's metric where it has one (``test_metric``), else
    minus the calibration loss."""
    return calib["test_metric"] if "test_metric" in calib else -calib["test_loss"]


@dataclass
class Entrant:
    """One configuration in the race: its label, bits, model copy and fine-tuning runner."""

    label: str
    bits: Bits
    model: nn.Module
    tune: FineTune
    calib: dict[str, float] = field(default_factory=dict)

    def rank_key(self) -> tuple[float, float]:
        return -calib_score(self.calib), -self.calib["test_top1"]


@dataclass
class RaceResult:
    """What the step's fine-tuning did: the winner's label, its margin over the runner-up in the last round
    (``calib_score``: calibration loss under the runner-up's, or metric over; NaN without a race), every
    round's standings, all epochs trained, train top-1."""

    selected: str
    margin: float
    rounds: list[list[dict[str, Any]]]
    epochs: int
    train_top1: float


def entrants(search: ProgressiveSearch, choice: Choice) -> list[tuple[str, Bits]]:
    """The race's configurations, at most ``select_candidates``, all distinct: the strategy's bits, the
    uniform ones that none of the strategy's configurations dominates (``dominates``: at least its bits on
    every knob, within the same targets), then the strategy's runners-up."""
    name = search.strategy.name
    labels = choice.labels or (name, *(f"{name} #{i}" for i in range(2, len(choice.alternatives) + 2)))
    own = list(zip(labels, (choice.bits, *choice.alternatives)))
    uniform = [(label, bits) for label, bits in uniform_bits(search, choice.bits)
               if not any(dominates(other, bits) for _, other in own)]
    distinct: list[tuple[str, Bits]] = []
    for label, bits in own[:1] + uniform + own[1:]:
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
        label = field_[0][0] if field_ else (choice.labels or (search.strategy.name,))[0]
        return RaceResult(label, math.nan, [], epochs, tune.run_to(epochs, on_batch))
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
            racer.calib = evaluate_loader(racer.model, search.data.calib_batches(), search.device, search.loss_fn,
                                          metric=search.metric)
        alive = sorted(alive, key=Entrant.rank_key)  # stable: on a tie the earlier entrant stays ahead
        rounds.append([{"label": r.label, "epochs": upto, "calib_top1": r.calib["test_top1"],
                        "calib_loss": r.calib["test_loss"]} | ({"calib_metric": r.calib["test_metric"]}
                                                               if "test_metric" in r.calib else {}) for r in alive])
        margin = calib_score(alive[0].calib) - calib_score(alive[1].calib)
        alive = alive[:max(1, len(alive) // 2)] if upto < epochs else alive[:1]
    winner = alive[0]
    train_top1 = winner.tune.run_to(epochs, on_batch)
    search.model.load_state_dict(winner.model.state_dict())
    BitConfig(winner.bits).apply(search.model)
    return RaceResult(winner.label, margin, rounds, sum(r.tune.done for r in racers), train_top1)
