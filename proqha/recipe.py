"""The model recipe (``ModelRecipe``): the plain description of a model that a checkpoint carries
(architecture, shapes, quantization settings), and the functions that rebuild the quantized model from it
(``build_model``) or from a checkpoint file (``load_model``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from proqha.checkpoint import Checkpoint, load_checkpoint
from proqha.errors import ProqhaError, first_line
from proqha.models import create_model
from proqha.quant import BitConfig, QuantConfig, load_float_state_dict, quantize_model
from proqha.quant.grid import FULL_PRECISION, LEGACY_QUANT


@dataclass
class ModelRecipe:
    """Everything needed to rebuild a model: architecture, shapes and how it was quantized."""

    arch: str
    num_classes: int
    in_channels: int
    input_size: tuple[int, int, int]
    quant: dict[str, Any] = field(default_factory=lambda: asdict(QuantConfig()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"input_size": list(self.input_size)}

    @property
    def float_run(self) -> bool:
        """Whether the model was trained in float (bits 32: every quantizer off)."""
        return self.quant.get("bits") == FULL_PRECISION

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelRecipe":
        quant = LEGACY_QUANT | dict(d["quant"])  # older runs: the grids they trained on
        return cls(d["arch"], int(d["num_classes"]), int(d["in_channels"]), tuple(d["input_size"]), quant)


def build_model(recipe: ModelRecipe, bits: BitConfig | None = None) -> nn.Module:
    """The quantized twin of the recipe's architecture, with ``bits`` applied when given."""
    try:
        qconfig = QuantConfig(**recipe.quant)
    except (TypeError, ValueError) as exc:
        raise ProqhaError(f"invalid quantization settings: {exc}") from None
    float_model = create_model(recipe.arch, num_classes=recipe.num_classes, in_channels=recipe.in_channels)
    model = quantize_model(float_model, qconfig, recipe.input_size)
    if bits is not None:
        bits.apply(model)
    return model


def load_model(path: Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Rebuild the model a checkpoint was saved from and load its weights; returns (model, checkpoint)."""
    state = load_checkpoint(path, map_location)
    try:
        recipe = ModelRecipe.from_dict(state.recipe)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProqhaError(f"checkpoint {path} has no usable model recipe ({exc})") from None
    model = build_model(recipe)
    try:
        BitConfig(state.bits).apply(model)
        load_float_state_dict(model, state.model)
    except (ProqhaError, ValueError, RuntimeError) as exc:
        raise ProqhaError(f"checkpoint {path} does not fit {recipe.arch}: {first_line(exc)}") from None
    return model, state
