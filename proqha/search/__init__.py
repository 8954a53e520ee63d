"""The ProQHA progressive mixed-precision search: its options (``config``), the step loop (``progressive``),
the registered strategies and criteria (``strategies``, ``criteria``: add one with ``@strategy(name)`` /
``@criterion(name)`` and its name in ``SearchConfig``'s choices), and a run's files (``record``,
``frontier``). Loaded on first use, so that ``proqha.search.config`` imports without torch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Knob": "knobs", "lowerable_knobs": "knobs", "model_knobs": "knobs", "sample_candidates": "knobs",
            "SearchConfig": "config", "run_search": "progressive", "ProgressiveSearch": "progressive",
            "accuracy_score": "scores", "hessian_score": "scores", "choose_candidate": "select",
            "Criterion": "criteria", "criterion": "criteria", "strategy": "strategies"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"proqha.search.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'proqha.search' has no attribute {name!r}")
