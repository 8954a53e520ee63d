"""Knobs: the (layer, "w" | "a") bit-widths the search may lower, and drawing candidates."""

from __future__ import annotations

from typing import Mapping, NamedTuple

import torch
from torch import nn

from proqha.quant import searchable_layers

Bits = dict[str, dict[str, int]]


class Knob(NamedTuple):
    """One searchable bit-width: a layer's weights ("w") or its input activations ("a")."""

    layer: str
    kind: str

    @property
    def column(self) -> str:
        return f"{self.layer}/{self.kind}"


def model_knobs(model: nn.Module) -> list[Knob]:
    """Both knobs of every searchable layer, in module order."""
    return [Knob(name, kind) for name in searchable_layers(model) for kind in ("w", "a")]


def lowerable_knobs(bits: Mapping[str, Mapping[str, int]], knobs: list[Knob], interval: int,
                    min_bits: int) -> list[Knob]:
    """Knobs that can drop by exactly ``interval`` without going below ``min_bits``."""
    return [k for k in knobs if bits[k.layer][k.kind] - interval >= min_bits]


def sample_candidates(bits: Mapping[str, Mapping[str, int]], knobs: list[Knob], count: int, ratio: float,
                      interval: int, min_bits: int, generator: torch.Generator) -> list[Bits]:
    """``count`` candidates; each lowers ``max(1, int(ratio * len(knobs)))`` knobs by ``interval``.

    The knobs are drawn without replacement among those that can still be lowered (fewer when fewer
    remain), so every change is exactly ``interval`` and nothing goes below ``min_bits``.
    Returns an empty list when no knob can be lowered.
    """
    pool = lowerable_knobs(bits, knobs, interval, min_bits)
    if not pool:
        return []
    per_candidate = min(len(pool), max(1, int(ratio * len(knobs))))
    candidates = []
    for _ in range(count):
        chosen = torch.randperm(len(pool), generator=generator)[:per_candidate].tolist()
        cand = {name: dict(kb) for name, kb in bits.items()}
        for i in chosen:
            knob = pool[i]
            cand[knob.layer][knob.kind] -= interval
        candidates.append(cand)
    return candidates
