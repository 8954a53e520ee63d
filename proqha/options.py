"""Options declared once: a config dataclass field carries its default, help text and valid range
(``option(...)``), and the CLI's flags, the API's defaults and every range check read it from there.

    epochs: int = option(15, "QAT epochs.", low=1)
    optimizer: str = option("sgd", "Optimizer.", choices=("sgd", "adam"))

``check_options(config)`` raises ``OptionError`` naming the option as the Python API spells it
(``epochs must be >= 1, got 0``); the CLI prints the same line with the flag (``--epochs must be >= 1,
got 0``). Importable without torch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from proqha.errors import OptionError

_KEY = "proqha"  # the field metadata entry that holds an option's declaration


@dataclasses.dataclass(frozen=True)
class Declared:
    """One option's declaration: help text and valid values (``low``/``high`` bounds, inclusive unless
    ``low_open``; ``choices``; or ``check``, a predicate with ``why`` as its message). ``cli``: whether the
    command line offers it (False for options a run records but users do not set)."""

    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], bool] | None = None
    why: str = ""
    cli: bool = True

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not valid (``must be ...``), or None. None values are always valid (unset)."""
        if value is None:
            return None
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}"
        if self.check is not None and not self.check(value):
            return self.why
        if self.low is not None or self.high is not None:
            if isinstance(value, float) and not math.isfinite(value):
                return "must be a finite number and " + self.range_text().removeprefix("must be ")
            low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
            if not (low_ok and (self.high is None or value <= self.high)):
                return self.range_text()
        return None

    def range_text(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"must be in ({self.low:g}, {self.high:g}]" if self.low_open
                    else f"must be in {self.low:g}..{self.high:g}")
        if self.low is not None:
            return f"must be {'>' if self.low_open else '>='} {self.low:g}"
        return f"must be <= {self.high:g}"


def option(default: Any, help: str, **rules: Any) -> Any:
    """A dataclass field with ``default`` and its declaration (``Declared``'s fields as keywords)."""
    return dataclasses.field(default=default, metadata={_KEY: Declared(help, **rules)})


def declared(config_cls: type, name: str) -> Declared:
    """The declaration of option ``name`` of a config dataclass."""
    for f in dataclasses.fields(config_cls):
        if f.name == name:
            return f.metadata.get(_KEY) or Declared("")
    raise KeyError(f"{config_cls.__name__} has no option {name!r}")


def default(config_cls: type, name: str) -> Any:
    """The declared default of option ``name``."""
    return next(f.default for f in dataclasses.fields(config_cls) if f.name == name)


def check_options(config: Any) -> None:
    """``OptionError`` for the first field of ``config`` whose value breaks its declaration."""
    for f in dataclasses.fields(config):
        decl = f.metadata.get(_KEY)
        value = getattr(config, f.name)
        why = decl.problem(value) if decl is not None else None
        if why:
            raise OptionError(f.name, f"{why}, got {value!r}" if isinstance(value, str) else f"{why}, got {value}")
