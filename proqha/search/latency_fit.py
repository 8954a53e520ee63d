"""Fitting a latency budget by measurement: the per-layer table predicts each float layer's cost alone, and
float neighbours share requantizations, so the table's choice is moved one float layer at a time, each move
measured on the whole graph, until the graph is within ``LATENCY_TOLERANCE`` under the budget."""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

from proqha.latency_model import FLOAT_FORMAT, layer_format
from proqha.quant import BitConfig
from proqha.quant.grid import FULL_PRECISION
from proqha.search.allocate import Damage
from proqha.search.knobs import Bits
from proqha.search.targets import LATENCY_TOLERANCE

if TYPE_CHECKING:
    from proqha.search.progressive import ProgressiveSearch

ROUNDS = 12  # measured moves at most


def fit_measured(search: ProgressiveSearch, bits: Bits, start: Bits, damage: Damage, target_ms: float) -> Bits:
    """``bits`` with float layers dropped while the measured graph is over ``target_ms``, or added while it is
    more than ``LATENCY_TOLERANCE`` under it; a dropped layer returns to its ``start`` bits. A move takes, of the
    layers whose predicted ms cover the excess (dropping) or fit the headroom (adding), the one that removes
    the least (dropping) or most (adding) loss per ms; where none does, the layer with the most (dropping) or
    least (adding) predicted ms. A layer whose addition takes the graph over the budget is refused (the table
    was off for it) and the fit goes on from the graph it was added to, with the next layer. A graph timed
    within the band is timed again and the mean of the two decides (one reading in a quiet spell of the machine
    does not end the fit). A graph in the band's lower half takes one more layer whose predicted ms fit the
    headroom (a final timing that reads a few percent fast then still lands within the band). Ends at the
    first graph within the band's upper half, else at the measured graph nearest under the budget (``start``,
    which the budget admits, when none was)."""
    table = search.base_cost.latency_model
    if search.latency is None or table is None:
        return bits
    model = copy.deepcopy(search.model)

    def measure(trial: Bits) -> float:  # ms on the table's clock (``ProgressiveSearch.time_graph``)
        BitConfig(trial).apply(model)
        return search.time_graph(model)[1] * table.reference

    def gain(name: str) -> float:  # the loss float removes from the layer's knobs at their start bits
        return sum(levels.get(start[k.layer][k.kind], 0.0) - levels.get(FULL_PRECISION, 0.0)
                   for k, levels in damage.items() if k.layer == name)

    def ms(name: str) -> float:  # the layer's predicted ms in float
        return table.deltas[name].get(FLOAT_FORMAT, math.inf)

    def per_ms(name: str) -> float:
        return gain(name) / max(ms(name), 1e-9)

    def is_float(trial: Bits, name: str) -> bool:
        return layer_format(trial[name]["w"], trial[name]["a"]) == FLOAT_FORMAT

    def in_band(ms_: float) -> bool:
        return target_ms * (1 - LATENCY_TOLERANCE) <= ms_ <= target_ms

    names, tried, accepted, refused = list(table.start), [], None, set()
    added: tuple[str, Bits, float] | None = None  # the last layer added, and the graph and ms it was added to
    measured = measure(bits)
    for _ in range(ROUNDS):
        if measured > target_ms and added is not None:  # the added layer costs more than the table said
            tried.append((measured, bits))
            name, bits, measured = added
            refused.add(name)
        elif in_band(measured):  # one timing in the band is confirmed by a second: their mean decides
            measured = (measured + measure(bits)) / 2
            if in_band(measured):
                if measured >= target_ms * (1 - LATENCY_TOLERANCE / 2):
                    return bits
                accepted = bits  # the band's lower half: one layer more may still fit
        added = None
        tried.append((measured, bits))
        trial = {n: dict(kb) for n, kb in bits.items()}
        if measured > target_ms:
            floats = [n for n in names if is_float(bits, n)]
            if not floats:
                break
            covering = [n for n in floats if ms(n) >= measured - target_ms]
            name = min(covering, key=per_ms) if covering else max(floats, key=ms)
            trial[name] = dict(start[name])
        else:
            rest = [n for n in names if not is_float(bits, n) and n not in refused]
            fitting = [n for n in rest if ms(n) <= target_ms - measured]
            if accepted is bits and not fitting:
                return bits
            if not rest:
                break
            name = max(fitting, key=per_ms) if fitting else min(rest, key=ms)
            trial[name] = {"w": FULL_PRECISION, "a": FULL_PRECISION}
            added = (name, bits, measured)
        if any(trial == seen for _, seen in tried):
            break
        bits, measured = trial, measure(trial)
    else:
        tried.append((measured, bits))
    under = [(m, b) for m, b in tried if m <= target_ms]
    return max(under, key=lambda t: t[0])[1] if under else start
