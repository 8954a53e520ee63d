"""Model registry: a decorator fills a dict; ``create_model`` drops options left at None so a CLI
default never overrides a model's own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from proqha.errors import ProqhaError


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: its builder and the input it was designed for."""

    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int, int]
    num_classes: int
    description: str


_MODELS: dict[str, ModelSpec] = {}


def register_model(input_size: tuple[int, int, int], num_classes: int) -> Callable:
    """Register ``fn(num_classes=..., in_channels=...) -> nn.Module`` under its function name."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        doc = (fn.__doc__ or "").strip().splitlines()
        _MODELS[fn.__name__] = ModelSpec(fn.__name__, fn, input_size, num_classes, doc[0] if doc else "")
        return fn

    return wrap


def list_models() -> list[str]:
    """Names of all registered architectures."""
    return sorted(_MODELS)


def get_model_spec(name: str) -> ModelSpec:
    """The spec of a registered architecture (ProqhaError for an unknown name)."""
    try:
        return _MODELS[name]
    except KeyError:
        raise ProqhaError(f"unknown architecture {name!r}; choose one of: {', '.join(list_models())}") from None


def create_model(name: str, num_classes: int | None = None, in_channels: int | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build a registered float model; options left at None keep the model's defaults."""
    spec = get_model_spec(name)
    options = {"num_classes": num_classes, "in_channels": in_channels, **kwargs}
    return spec.builder(**{k: v for k, v in options.items() if v is not None})
