"""Choosing a candidate: sensitivity against cost reduction."""

from __future__ import annotations

import math
from typing import Sequence


def choose_candidate(scores: Sequence[float], savings: Sequence[float], lam: float) -> int:
    """Index minimising ``score / mean(score) - lam * saving / mean(saving)`` (first one on ties).

    ``lam = 0`` is the reference's choice (the lowest score). Candidates with a non-finite score are
    never chosen unless all are.
    """
    finite = [s for s in scores if math.isfinite(s)]
    if not finite:
        return 0
    mean_score = sum(finite) / len(finite)
    mean_saving = sum(savings) / len(savings) if savings else 0.0
    best, best_value = 0, math.inf
    for i, (score, saving) in enumerate(zip(scores, savings, strict=True)):
        if not math.isfinite(score):
            continue
        value = (score / mean_score if mean_score > 0 else 0.0) - (
            lam * saving / mean_saving if mean_saving > 0 else 0.0)
        if value < best_value:
            best, best_value = i, value
    return best
