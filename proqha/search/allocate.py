"""Budget allocation from a sensitivity table: which bits each knob gets so that every target is met with
the least total damage (the knapsack of HAWQ-V3, solved by Lagrangian relaxation plus a greedy fill).

The table holds, per knob and bit level, the calibration loss the model adds when only that knob is at
that level; damages are taken as additive across knobs. For multipliers (mu_cost, mu_bitops) each layer
independently picks the (weight, activation) pair minimising damage + mu_cost * cost + mu_bitops * BitOPs;
a grid over the multipliers yields allocations. Two starts are then improved locally (the feasible
relaxation with the least damage, and the lowest feasible uniform allocation; or the two lowest uniform
ones when the relaxation finds none): the slack is spent by raising, one level at a time, the knob that
removes the most damage while every target stays met, and pairs of knobs trade a level (one up, one
down) while that removes damage. The better result wins.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np

from proqha.cost import CostReport
from proqha.search.knobs import Bits, BitsLike, Knob

Damage = dict[Knob, dict[int, float]]  # per knob: bit level -> loss added (0 at its current level)
MULTIPLIERS = np.concatenate([[0.0], np.logspace(-3, 4, 36)])  # relative to damage per unit of budget


def allocate(current: BitsLike, damage: Damage, report: CostReport,
             feasible: Callable[[Bits], bool], floor: BitsLike | None = None) -> Bits | None:
    """The bits that minimise the summed damage with ``feasible`` (every target met), each knob at one of
    its table levels (knobs outside the table keep their bits) and, with ``floor``, at or above the floor's
    bits (``floored``); None when no allocation is feasible."""
    found = allocations(current, damage if floor is None else floored(damage, floor), report, feasible, 1)
    return found[0] if found else None


def floored(damage: Damage, floor: BitsLike) -> Damage:
    """The table without the levels below ``floor``'s bits (a knob whose table stops below its floor keeps
    its top level: the table has no level above the knob's current bits)."""
    return {knob: {b: d for b, d in levels.items() if b >= min(floor[knob.layer][knob.kind], max(levels))}
            for knob, levels in damage.items()}


def allocations(current: BitsLike, damage: Damage, report: CostReport, feasible: Callable[[Bits], bool],
                count: int = 3) -> list[Bits]:
    """Up to ``count`` distinct feasible allocations, least summed damage first; the first is ``allocate``'s.
    The others are the runners-up, least damage first: the other improved starts (more relaxation points,
    uniform starts) and the allocations one move away from the first."""
    layers = {layer.name: (layer.params, layer.macs) for layer in report.layers if layer.name in current}
    names = sorted({k.layer for k in damage})
    options = {name: _options(name, current, damage) for name in names}
    total_params = sum(layers[n][0] for n in names) or 1
    total_macs = sum(layers[n][1] for n in names) or 1
    scale = max((v for d in damage.values() for v in d.values() if math.isfinite(v)), default=1.0) or 1.0
    relaxed: list[tuple[float, int, Bits]] = []
    starts = [_uniform(current, damage, level) for level in sorted({b for d in damage.values() for b in d})]
    for mu_cost, mu_ops in itertools.product(MULTIPLIERS, MULTIPLIERS):
        bits = {n: dict(kb) for n, kb in current.items()}
        for name in names:
            params, macs = layers[name]
            w_share, ops_share = params / total_params, macs / total_macs
            bits[name]["w"], bits[name]["a"] = min(
                options[name], key=lambda o: o[2] + scale * (mu_cost * w_share * o[0] / 8
                                                             + mu_ops * ops_share * o[0] * o[1] / 64))[:2]
        if feasible(bits) and all(bits != other for _, _, other in relaxed):
            relaxed.append((summed_damage(bits, damage), len(relaxed), bits))
    relaxed.sort(key=lambda t: t[:2])  # least damage, then the first found (the relaxation's best)
    found = [bits for _, _, bits in relaxed[:1]] + [u for u in starts if feasible(u)]
    if not found:
        return []
    improved = [_improve(bits, damage, feasible) for bits in found[:2]]
    best = min(improved, key=lambda bits: summed_damage(bits, damage))
    if count <= 1:
        return [best]
    others = improved + [_improve(bits, damage, feasible) for bits in
                         [b for _, _, b in relaxed[1:count + 1]] + found[2:count + 1]]
    distinct: list[Bits] = [best]
    for bits in sorted(others + _neighbours(best, damage, feasible), key=lambda bits: summed_damage(bits, damage)):
        if all(bits != seen for seen in distinct):
            distinct.append(bits)
    return distinct[:count]


def _neighbours(bits: Bits, damage: Damage, feasible: Callable[[Bits], bool]) -> list[Bits]:
    """The feasible allocations one move from ``bits`` (one knob a level down, or two knobs trading a level),
    least damage first: the runners-up when every start improves to the same allocation."""
    moves = []
    for up, down in itertools.product([None, *damage], damage):
        if up == down:
            continue
        trial = {n: dict(kb) for n, kb in bits.items()}
        lower = [b for b in damage[down] if b < bits[down.layer][down.kind]]
        higher = [b for b in damage[up] if b > bits[up.layer][up.kind]] if up is not None else [0]
        if not lower or not higher:
            continue
        trial[down.layer][down.kind] = max(lower)
        if up is not None:
            trial[up.layer][up.kind] = min(higher)
        if feasible(trial):
            moves.append((summed_damage(trial, damage), len(moves), trial))
    return [trial for _, _, trial in sorted(moves, key=lambda m: m[:2])]


def _uniform(current: BitsLike, damage: Damage, level: int) -> Bits:
    """Every knob of the table at ``level`` (or its nearest level below, else its lowest)."""
    bits = {n: dict(kb) for n, kb in current.items()}
    for knob, levels in damage.items():
        below = [b for b in levels if b <= level]
        bits[knob.layer][knob.kind] = max(below) if below else min(levels)
    return bits


def _improve(bits: Bits, damage: Damage, feasible: Callable[[Bits], bool]) -> Bits:
    """Spend the slack (``_fill``), then trade one level between two knobs while that removes damage."""
    while True:
        bits = _fill(bits, damage, feasible)
        total = summed_damage(bits, damage)
        best: tuple[float, Bits] | None = None
        for up, down in itertools.permutations(damage, 2):
            levels_up, levels_down = damage[up], damage[down]
            now_up, now_down = bits[up.layer][up.kind], bits[down.layer][down.kind]
            higher = [b for b in levels_up if b > now_up]
            lower = [b for b in levels_down if b < now_down]
            if not higher or not lower:
                continue
            trial = {n: dict(kb) for n, kb in bits.items()}
            trial[up.layer][up.kind], trial[down.layer][down.kind] = min(higher), max(lower)
            gain = total - summed_damage(trial, damage)
            if gain > 1e-12 and (best is None or gain > best[0]) and feasible(trial):
                best = (gain, trial)
        if best is None:
            return bits
        bits = best[1]


def _options(name: str, current: BitsLike, damage: Damage) -> list[tuple[int, int, float]]:
    """(weight bits, activation bits, damage) pairs a layer may take."""
    w_levels = damage.get(Knob(name, "w"), {current[name]["w"]: 0.0})
    a_levels = damage.get(Knob(name, "a"), {current[name]["a"]: 0.0})
    return [(w, a, dw + da) for (w, dw), (a, da) in itertools.product(w_levels.items(), a_levels.items())]


def summed_damage(bits: BitsLike, damage: Damage) -> float:
    """The table's damage of ``bits``, summed over its knobs (inf where a knob is at a level it lacks)."""
    return sum(levels.get(bits[k.layer][k.kind], math.inf) for k, levels in damage.items())


def _fill(bits: Bits, damage: Damage, feasible: Callable[[Bits], bool]) -> Bits:
    """Raise knobs one table level at a time, most damage removed first, while every target stays met."""
    while True:
        moves = []
        for knob, levels in damage.items():
            now = bits[knob.layer][knob.kind]
            higher = sorted(b for b in levels if b > now)
            if higher:
                moves.append((levels[now] - levels[higher[0]], knob, higher[0]))
        moves.sort(key=lambda m: -m[0])
        for gain, knob, level in moves:
            trial = {n: dict(kb) for n, kb in bits.items()}
            trial[knob.layer][knob.kind] = level
            if feasible(trial):
                bits = trial
                break
        else:
            return bits
