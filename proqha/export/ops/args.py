"""What every operator handler reads of its fx node: arguments by position or keyword, its input
tensor's name, its rank, a normalised axis; ``Handler`` is a handler's type."""

from __future__ import annotations

from typing import Any, Callable

import torch.fx as fx

Handler = Callable[[Any, fx.Node], "str | list[str]"]


def pair(v: Any) -> list[int]:
    """An int or a 2-sequence as a list of two ints."""
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Positional argument ``index`` of a call, or its keyword ``name``."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def x_of(w, node: fx.Node) -> str:
    """The tensor name of the node's first argument."""
    return w.env[node.args[0]]


def rank_of(w, node: Any) -> int:
    return len(w.shape(node))


def axis_of(w, node: fx.Node, dim: int) -> int:
    return dim % rank_of(w, node)
