"""The latency model: a graph's latency on one engine, batch and CPU predicted from a per-layer table measured
once (``proqha.deploy.latency_table.measure_latency_model``): the start graph's latency plus, per layer, what
moving it to another format adds. A layer's format is what changes its kernel or its nodes on a CPU engine:
float (either side at 32 bit: the conv runs in float), or int8 kernels with the weights stored at 2, 4 or 8
bits and the input activation clamped (narrower than 8 bit) or not (``layer_format``). The core never
measures: callers that may export inject a ``LatencyMeasurer``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol

from proqha.quant.grid import FULL_PRECISION
from proqha.quant.storage import clamped_activation, stored_bits

if TYPE_CHECKING:
    from torch import nn

    from proqha.cost import CostReport

FLOAT_FORMAT = "float"


def layer_format(w_bits: int, a_bits: int) -> str:
    """The format a layer at ``w_bits``/``a_bits`` runs in: "float", or "int<stored weight bits>" with
    "+clamp" when its input grid is narrower than 8 bit (``int8``, ``int4+clamp``, ...)."""
    if w_bits >= FULL_PRECISION or a_bits >= FULL_PRECISION:
        return FLOAT_FORMAT
    return f"int{stored_bits(w_bits)}" + ("+clamp" if clamped_activation(a_bits) else "")


FORMAT_BITS = {"float": (32, 32), "int8": (8, 8), "int8+clamp": (8, 4), "int4": (4, 8), "int4+clamp": (4, 4),
               "int2": (2, 8), "int2+clamp": (2, 4)}  # a representative (w, a) per format, for measuring


@dataclass(frozen=True)
class LatencyModel:
    """Per-call latency (ms, median) of the start graph on ``engine`` at ``batch`` on ``cpu`` (``base_ms``), the
    start format of each searchable layer, and per layer the milliseconds its move to each other format adds
    (``deltas``: format -> ms, each measured with only that layer moved). ``key``: what the table was measured
    for (engine, batch, CPU, model), so a cached table is reused only where it holds. ``reference_ms``: the
    uniform 8-bit graph's latency on the table's clock (what ``target_latency_ratio`` multiplies; set by the
    search, not kept in the cached table; None: ``base_ms``, the start graph being that graph)."""

    engine: str
    batch: int
    cpu: str
    base_ms: float
    start: Mapping[str, str]
    deltas: Mapping[str, Mapping[str, float]]
    key: Mapping[str, Any] = field(default_factory=dict)
    reference_ms: float | None = None

    @property
    def reference(self) -> float:
        """The uniform 8-bit graph's latency (ms) on the table's clock."""
        return self.base_ms if self.reference_ms is None else self.reference_ms

    def predict(self, report: CostReport) -> float:
        """The predicted latency (ms) of the graph at ``report``'s bits: the start graph's plus each moved
        layer's measured delta (a format the table lacks raises KeyError)."""
        total = self.base_ms
        for layer in report.layers:
            if layer.name not in self.start:
                continue
            fmt = layer_format(layer.w_bits, layer.a_bits)
            if fmt != self.start[layer.name]:
                total += self.deltas[layer.name][fmt]
        return total

    def fastest_formats(self) -> dict[str, str]:
        """Per layer, the format the table finds fastest: the one with the most negative delta, else its start."""
        fastest = {}
        for name, start in self.start.items():
            fmt, delta = min(self.deltas.get(name, {}).items(), key=lambda kv: kv[1], default=(start, 0.0))
            fastest[name] = fmt if delta < 0 else start
        return fastest

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "batch": self.batch, "cpu": self.cpu, "base_ms": self.base_ms,
                "start": dict(self.start), "deltas": {n: dict(d) for n, d in self.deltas.items()},
                "key": dict(self.key)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LatencyModel":
        return cls(data["engine"], int(data["batch"]), data["cpu"], float(data["base_ms"]), dict(data["start"]),
                   {n: {f: float(v) for f, v in d.items()} for n, d in data["deltas"].items()}, dict(data["key"]))


class LatencyMeasurer(Protocol):
    """Measures latency for a search (injected by the CLI and the API: ``proqha.deploy.latency_table``):
    ``table`` the per-layer table of a model at its start bits, ``graph_ms`` one whole graph at its bits,
    ``graph_ms_beside`` one whole graph and a reference graph timed interleaved (a drift of the machine moves
    both alike)."""

    def table(self, model: nn.Module, input_size: tuple[int, ...]) -> LatencyModel: ...

    def graph_ms(self, model: nn.Module, input_size: tuple[int, ...]) -> float: ...

    def graph_ms_beside(self, model: nn.Module, reference: nn.Module, input_size: tuple[int, ...]
                        ) -> tuple[float, float]: ...

