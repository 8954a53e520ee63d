"""The criteria a search scores candidates by, in a registry (``@criterion(name)`` fills ``CRITERIA_TABLE``):
hessian (the reference's), loss, acc and random (a control). A criterion scores every candidate of a step
(lower: less sensitive) and turns scores and budget savings into the values the step is ranked by.
The names are declared once, as ``SearchConfig.criterion``'s choices."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from proqha import distributed
from proqha.errors import ProqhaError
from proqha.quant import BitConfig
from proqha.search.data import Batch
from proqha.search.knobs import Bits
from proqha.search.scores import Snapshot, accuracy_score, hessian_score, loss_score
from proqha.search.select import objective
from proqha.train import LossFn

LOSS_FLOOR = 1e-6  # a candidate's loss increase is at least this (calibration noise can make it negative)
Scorer = Callable[[], float]  # scores the candidate the model holds now
Progress = Callable[[int, int], None]  # (candidate index, candidates)


@dataclass
class Scoring:
    """What one step's candidates are scored with: the model as the step found it (``snapshot``), the
    step's training batch (``x``, ``y``) and, for criteria that need it, the calibration batches."""

    model: nn.Module
    device: torch.device
    snapshot: Snapshot
    x: torch.Tensor
    y: torch.Tensor
    lr: float
    loss_fn: LossFn | None = None
    calib: Iterable[Batch] | None = None


class Criterion:
    """Scores candidates (lower: less sensitive) and ranks them; ``needs_calib``: it measures on the
    calibration data."""

    name = ""
    needs_calib = False

    def scorer(self, scoring: Scoring) -> Scorer:
        """The score of the candidate the model holds (called once per candidate)."""
        raise NotImplementedError

    def score_all(self, setup: Callable[[], Scoring], candidates: list[Bits], progress: Progress | None = None
                  ) -> list[float]:
        """Each candidate's score, measured on ``setup()``; under torchrun each rank scores its share and every
        rank gets all the scores."""
        scoring = setup()
        model, score = scoring.model, self.scorer(scoring)
        mine: dict[int, float] = {}
        for i in range(distributed.rank(), len(candidates), distributed.world_size()):
            scoring.snapshot.restore(model)
            BitConfig(candidates[i]).apply(model)
            mine[i] = score()
            if progress is not None:
                progress(i, len(candidates))
        scoring.snapshot.restore(model)
        scores: dict[int, float] = {}
        for part in distributed.all_gather(mine):
            scores.update(part)
        return [scores[i] for i in range(len(candidates))]

    def rank(self, scores: list[float], savings: list[float], lam: float, gen: torch.Generator, step: int
             ) -> list[float]:
        """The value each candidate is ranked by (lower first): ``objective`` of score and saving."""
        values = objective(scores, savings, lam)
        if not any(math.isfinite(v) for v in values):
            raise ProqhaError(f"step {step}: every candidate's loss is non-finite; lower the learning rate (lr)")
        return values


CRITERIA_TABLE: dict[str, Criterion] = {}


def criterion(name: str) -> Callable[[type[Criterion]], type[Criterion]]:
    """Register a ``Criterion`` subclass under ``name`` (a ``SearchConfig.criterion`` choice)."""

    def register(cls: type[Criterion]) -> type[Criterion]:
        instance = cls()
        instance.name = name
        CRITERIA_TABLE[name] = instance
        return cls

    return register


def criterion_named(name: str) -> Criterion:
    """The registered criterion ``name``."""
    if name not in CRITERIA_TABLE:
        raise ProqhaError(f"criterion must be one of {', '.join(CRITERIA_TABLE)}, got {name!r}")
    return CRITERIA_TABLE[name]


@criterion("hessian")
class HessianCriterion(Criterion):
    """The reference's score: one Adam step on the step's batch, weighted by Adam's curvature estimate."""

    def scorer(self, scoring: Scoring) -> Scorer:
        s = scoring
        return lambda: hessian_score(s.model, s.x, s.y, s.snapshot.tensors, lr=s.lr, loss_fn=s.loss_fn)


@criterion("loss")
class LossCriterion(Criterion):
    """The calibration loss a candidate adds to the model as the step found it."""

    needs_calib = True

    def scorer(self, scoring: Scoring) -> Scorer:
        s = scoring
        base = loss_score(s.model, s.calib, s.device, s.loss_fn)

        def score() -> float:
            loss = loss_score(s.model, s.calib, s.device, s.loss_fn)
            return max(loss - base, LOSS_FLOOR) if math.isfinite(loss) else math.inf

        return score


@criterion("acc")
class AccuracyCriterion(Criterion):
    """The candidate's error rate on the calibration data."""

    needs_calib = True

    def scorer(self, scoring: Scoring) -> Scorer:
        return lambda: accuracy_score(scoring.model, scoring.calib, scoring.device)


@criterion("random")
class RandomCriterion(Criterion):
    """A control: no scores, candidates ranked in a random order drawn from the step's generator."""

    def score_all(self, setup: Callable[[], Scoring], candidates: list[Bits], progress: Progress | None = None
                  ) -> list[float]:
        return [math.nan] * len(candidates)  # never sets up: no batch drawn, the model untouched

    def rank(self, scores: list[float], savings: list[float], lam: float, gen: torch.Generator, step: int
             ) -> list[float]:
        return torch.rand(len(scores), generator=gen).tolist()
