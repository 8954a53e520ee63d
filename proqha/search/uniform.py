"""The uniform configurations a budget admits: every searched knob at one weight width and one activation
width (the baselines a search must not fall below), and whether one configuration dominates another."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proqha.search.config import KNOB_KINDS, START_BITS
from proqha.search.knobs import Bits, BitsLike
from proqha.search.targets import target_met

if TYPE_CHECKING:
    from proqha.search.progressive import ProgressiveSearch


def uniform_bits(search: ProgressiveSearch, base: Bits) -> list[tuple[str, Bits]]:
    """The uniform configurations that meet the targets and are maximal (no other feasible uniform one has
    at least as many bits on both kinds), most BitOPs first: every searched knob at W w / A a bits, labelled
    "uniform WwAa"."""
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


def dominates(bits: BitsLike, other: BitsLike) -> bool:
    """Whether ``bits`` gives every knob of ``other`` at least ``other``'s bits (the same layers)."""
    return bits.keys() == other.keys() and all(bits[n][k] >= other[n][k] for n in other for k in other[n])
