"""User code by import path: ``package.module:attribute``, resolved with the working directory on
``sys.path`` (as uvicorn resolves its app), so a file next to where ``proqha`` runs is importable."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from typing import Any, Callable

from proqha.errors import OptionError, ProqhaError, first_line

_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def loaded_attributes(module_name: str, *names: str) -> tuple[Any, ...]:
    """``names`` from ``module_name`` if something has imported it already, else (): for types a model can
    only hold once its library is imported (torchvision's take seconds to import for models without them)."""
    module = sys.modules.get(module_name)
    return tuple(getattr(module, n) for n in names) if module is not None else ()


def is_import_path(name: str | None) -> bool:
    """Whether ``name`` reads as ``module:attribute`` (a registry name never holds a colon)."""
    return name is not None and ":" in name


def import_object(path: str, option: str) -> Any:
    """The object ``path`` (``pkg.module:attr``, dots in ``attr`` walk attributes) names.

    Any problem (bad syntax, a module that is missing or fails to import, a missing attribute) is one
    OptionError naming ``option`` (as the API spells it: ``arch``, ``dataset``).
    """
    if not _PATH.match(path):
        raise OptionError(option, f"{path!r} is not an import path of the form package.module:factory")
    module_name, attr = path.split(":", 1)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise OptionError(option, f"{path}: no module named {module_name!r} (looked in the working directory "
                              f"{cwd} and on sys.path)") from None
        raise OptionError(option, f"{path}: importing {module_name!r} failed: {first_line(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - user code can raise anything while it is imported
        raise OptionError(option, f"{path}: importing {module_name!r} failed: {first_line(exc)}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise OptionError(option, f"{path}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def import_callable(path: str, option: str) -> Callable[..., Any]:
    """``import_object`` that must name something callable (a factory)."""
    obj = import_object(path, option)
    if not callable(obj):
        raise OptionError(option, f"{path}: {type(obj).__name__} object is not callable (expected a factory)")
    return obj


def call_factory(fn: Callable[..., Any], path: str, option: str, **kwargs: Any) -> Any:
    """Call ``fn`` with those of ``kwargs`` its signature accepts; an exception it raises becomes one
    ProqhaError (the original stays chained for ``proqha --debug``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: pass nothing
        params = []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        accepted = dict(kwargs)
    else:
        names = {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                      inspect.Parameter.KEYWORD_ONLY)}
        accepted = {k: v for k, v in kwargs.items() if k in names}
    try:
        return fn(**accepted)
    except ProqhaError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code can raise anything
        raise OptionError(option, f"{path} raised {type(exc).__name__}: {first_line(exc)}") from exc
