"""Every seed proqha derives from a run's ``seed``, named in one place: the same seed gives the same run, and
no two uses of one seed draw the same random numbers.

A training epoch's shuffle and dropout use ``epoch_seed``; each search step derives its draws from
``step_seed`` with a named ``Salt``. The formulas are the ones runs were written with, so resumed and
repeated runs keep their figures.
"""

from __future__ import annotations

from enum import IntEnum


class Salt(IntEnum):
    """What a search step's draw is for (``step_seed``'s ``salt``)."""

    CANDIDATES = 0  # the global torch seed while a step scores its candidates
    SCORING_BATCH = 1  # the training batch a step's sensitivity scores are measured on
    CANDIDATE_SETS = 2  # the random knob sets of the "sets" strategy
    TABLE_BATCHES = 3  # the training batches of the allocation's loss table
    FINETUNE_EPOCH = 100  # + epoch: the fine-tuning epochs after a step


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of training epoch ``epoch`` (1-based) of a run seeded ``seed``: its shuffle and global draws."""
    return seed * 100_003 + epoch


def step_seed(seed: int, step: int, salt: int = Salt.CANDIDATES) -> int:
    """The seed of one draw (``salt``) of search step ``step`` of a search seeded ``seed``."""
    return (seed * 1_000_003 + step * 10_007 + int(salt)) % (2**63)
