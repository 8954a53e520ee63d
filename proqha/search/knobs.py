"""Knobs: the (layer, "w" | "a") bit-widths the search may lower, and drawing candidates. ``Bits`` (from
``proqha.quant.bitconfig``) is a bit config as plain data, ``BitsLike`` any read-only mapping of that shape."""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import torch
from torch import nn

from proqha.quant import searchable_layers
from proqha.quant.bitconfig import Bits
from proqha.search.config import KNOB_KINDS

BitsLike = Mapping[str, Mapping[str, int]]  # any read-only mapping of the shape of ``Bits``
KNOB_SEP = "/"  # a knob's column name: layer/kind


class Knob(NamedTuple):
    """One searchable bit-width: a layer's weights ("w") or its input activations ("a")."""

    layer: str
    kind: str

    @property
    def column(self) -> str:
        return f"{self.layer}{KNOB_SEP}{self.kind}"


def model_knobs(model: nn.Module, kinds: str = "both") -> list[Knob]:
    """The knobs of every searchable layer, in module order: both, or only ``"weights"`` or
    ``"activations"`` (``KNOB_KINDS``)."""
    return [Knob(name, kind) for name in searchable_layers(model) for kind in KNOB_KINDS[kinds]]


def lowerable_knobs(bits: BitsLike, knobs: list[Knob], interval: int,
                    min_bits: int) -> list[Knob]:
    """Knobs that can drop by exactly ``interval`` without going below ``min_bits``."""
    return [k for k in knobs if bits[k.layer][k.kind] - interval >= min_bits]


def lowered(bits: BitsLike, knob: Knob, interval: int) -> Bits:
    """A copy of ``bits`` with one knob lowered by ``interval``."""
    out = {name: dict(kb) for name, kb in bits.items()}
    out[knob.layer][knob.kind] -= interval
    return out


def sample_candidates(bits: BitsLike, knobs: list[Knob], count: int, ratio: float,
                      interval: int, min_bits: int, generator: torch.Generator,
                      enough: Callable[[Bits], bool] | None = None) -> list[Bits]:
    """``count`` candidates; each lowers ``max(1, int(ratio * len(knobs)))`` knobs by ``interval``.

    The knobs are drawn without replacement among those that can still be lowered (fewer when fewer
    remain), so every change is exactly ``interval`` and nothing goes below ``min_bits``. With
    ``enough`` (the budget is met), a candidate stops lowering, in its drawn order, at the first knob
    after which ``enough`` holds: it lands on the budget with at most one knob's overshoot.
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
            if enough is not None and enough(cand):
                break
        candidates.append(cand)
    return candidates
