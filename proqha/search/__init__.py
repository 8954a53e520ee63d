"""The ProQHA progressive mixed-precision search and its sensitivity scores (loaded on first use, so that
``proqha.search.config`` imports without torch)."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Knob": "knobs", "lowerable_knobs": "knobs", "model_knobs": "knobs", "sample_candidates": "knobs",
            "SearchConfig": "config", "run_search": "progressive", "accuracy_score": "scores",
            "hessian_score": "scores", "choose_candidate": "select"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"proqha.search.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'proqha.search' has no attribute {name!r}")
