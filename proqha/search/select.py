"""Choosing candidates: sensitivity against cost reduction."""

from __future__ import annotations

import math
from typing import Sequence


def objective(scores: Sequence[float], savings: Sequence[float], lam: float) -> list[float]:
    """``score / mean(score) - lam * saving / mean(saving)`` per candidate (lower is better); a non-finite
    score gives +inf."""
    finite = [s for s in scores if math.isfinite(s)]
    mean_score = sum(finite) / len(finite) if finite else 0.0
    mean_saving = sum(savings) / len(savings) if savings else 0.0
    values = []
    for score, saving in zip(scores, savings, strict=True):
        if not math.isfinite(score):
            values.append(math.inf)
            continue
        values.append((score / mean_score if mean_score > 0 else 0.0) - (
            lam * saving / mean_saving if mean_saving > 0 else 0.0))
    return values


def choose_candidate(scores: Sequence[float], savings: Sequence[float], lam: float) -> int:
    """Index minimising ``objective`` (first one on ties).

    ``lam = 0`` is the reference's choice (the lowest score). Candidates with a non-finite score are
    never chosen unless all are.
    """
    values = objective(scores, savings, lam)
    return min(range(len(values)), key=lambda i: (values[i], i)) if values else 0
