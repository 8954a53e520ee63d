"""Model registry: a decorator fills a dict; ``create_model`` drops options left at None so a CLI
default never overrides a model's own. A name of the form ``package.module:factory`` is the user's own
model factory, imported from the working directory or sys.path (``proqha.imports``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from proqha.errors import OptionError, ProqhaError
from proqha.imports import call_factory, import_callable, is_import_path


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: its builder and the input it was designed for (None for a user factory,
    which serves whatever data it is given)."""

    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int, int] | None
    num_classes: int | None
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
    """The spec of a registered architecture or of a ``module:factory`` import path (ProqhaError for an
    unknown name or a path that does not import to a callable)."""
    if is_import_path(name):
        fn = import_callable(name, "arch")
        doc = (getattr(fn, "__doc__", None) or "").strip().splitlines()
        return ModelSpec(name, fn, None, None, doc[0] if doc else "")
    try:
        return _MODELS[name]
    except KeyError:
        hint = ""
        if "." in name:  # my_pkg.models.make_net: the import-path form with its colon missing
            module, _, attr = name.rpartition(".")
            hint = f" (your own model? name it as module:factory, {module}:{attr})"
        elif _torchvision_builder(name):
            hint = f" (torchvision's: name it torchvision.models:{name})"
        raise ProqhaError(f"unknown architecture {name!r}{hint}; choose one of: {', '.join(list_models())}") from None


def _torchvision_builder(name: str) -> bool:
    """Whether torchvision has a model builder ``name`` (imported only for this message)."""
    try:
        import torchvision.models
    except ImportError:
        return False
    return name.isidentifier() and name in torchvision.models.list_models()


def create_model(name: str, num_classes: int | None = None, in_channels: int | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build a float model; options left at None keep the model's defaults.

    For an import path the factory gets those options its signature names (``make_net(num_classes,
    in_channels)``, both optional); it must return an ``nn.Module`` (ProqhaError otherwise).
    """
    spec = get_model_spec(name)
    options = {k: v for k, v in {"num_classes": num_classes, "in_channels": in_channels, **kwargs}.items()
               if v is not None}
    if not is_import_path(name):
        return spec.builder(**options)
    model = call_factory(spec.builder, name, "arch", **options)
    if not isinstance(model, nn.Module):
        raise OptionError("arch", f"{name} returned {type(model).__name__}, not a torch.nn.Module")
    return model
