"""BitConfig: the per-layer bit assignment ``{"layer1.0.conv1": {"w": 4, "a": 5}, ...}``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping

from torch import nn

from proqha.errors import ProqhaError
from proqha.quant.convert import quant_layers
from proqha.quant.quantizers import check_bits

KNOBS = ("w", "a")
Bits = dict[str, dict[str, int]]  # a bit config as plain data: {layer: {"w": bits, "a": bits}}


class BitConfig(Mapping[str, dict[str, int]]):
    """Weight ("w") and input-activation ("a") bits of every quantized layer, by module path.

    Bits are integers 2..8 or 32 (full precision). Construction validates types and ranges; ``apply``
    and ``validate_for`` also check that the layer names match a model exactly.
    """

    def __init__(self, layers: Mapping[str, Mapping[str, Any]]) -> None:
        if not isinstance(layers, Mapping):
            raise ProqhaError(f"bit config must be a JSON object of layers, got {type(layers).__name__}")
        self._layers: Bits = {}
        for name, knobs in layers.items():
            if not isinstance(knobs, Mapping):
                raise ProqhaError(f"bit config: layer {name!r} must map 'w' and 'a' to bits, got {knobs!r}")
            unknown = set(knobs) - set(KNOBS)
            missing = set(KNOBS) - set(knobs)
            if unknown or missing:
                what = f"unknown key {sorted(unknown)[0]!r}" if unknown else f"missing key {sorted(missing)[0]!r}"
                raise ProqhaError(f"bit config: layer {name!r} has {what} (expected 'w' and 'a')")
            try:
                self._layers[name] = {k: check_bits(knobs[k], f"layer {name!r} {k!r} bits") for k in KNOBS}
            except ValueError as exc:
                raise ProqhaError(f"bit config: {exc}") from None

    # Mapping protocol
    def __getitem__(self, name: str) -> dict[str, int]:
        return self._layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __repr__(self) -> str:
        return f"BitConfig({self._layers})"

    def to_dict(self) -> Bits:
        return {n: dict(k) for n, k in self._layers.items()}

    # model I/O
    @classmethod
    def from_model(cls, model: nn.Module) -> "BitConfig":
        """The bits a quantized model currently uses."""
        return cls({n: {"w": m.w_bits, "a": m.a_bits} for n, m in quant_layers(model).items()})

    def validate_for(self, model: nn.Module) -> None:
        """Raise ProqhaError naming the first unknown or missing layer."""
        names = list(quant_layers(model))
        unknown = [n for n in self._layers if n not in names]
        if unknown:
            raise ProqhaError(f"bit config: unknown layer {unknown[0]!r} (the model has e.g. {names[0]!r})")
        missing = [n for n in names if n not in self._layers]
        if missing:
            raise ProqhaError(f"bit config: missing layer {missing[0]!r} ({len(missing)} of {len(names)} missing)")

    def apply(self, model: nn.Module) -> None:
        """Set every layer's bits (the config must name exactly the model's quantized layers)."""
        self.validate_for(model)
        layers = quant_layers(model)
        for name, knobs in self._layers.items():
            layers[name].set_bits(w=knobs["w"], a=knobs["a"])

    # JSON I/O
    @classmethod
    def load(cls, path: str | Path) -> "BitConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ProqhaError(f"bit config file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProqhaError(f"bit config {path} is not readable JSON: {exc}") from None
        return cls(data)

    def save(self, path: str | Path) -> None:
        from proqha.files import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")
