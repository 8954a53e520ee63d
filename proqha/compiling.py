"""torch.compile for quantized models, with eager execution (and one warning line) where compiling fails."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from proqha.errors import first_line


def _compile_failure(exc: BaseException) -> bool:
    """Whether an exception comes from torch.compile itself (Dynamo, AOTAutograd, Inductor) rather than
    from the model: those are raised again by the eager call."""
    module = type(exc).__module__
    return isinstance(exc, torch._dynamo.exc.TorchDynamoException) or module.startswith(
        ("torch._dynamo", "torch._inductor", "torch._functorch", "torch.fx.experimental"))


class Compiled(nn.Module):
    """``module`` run through ``torch.compile``; it shares the module's parameters and state (its
    ``train()``/``eval()`` reach the module). Bit-width changes are Python values the compiled graphs are
    guarded on, so a changed quantizer recompiles rather than reuse a stale graph. If compiling fails,
    one warning names the reason and every later call runs eagerly."""

    def __init__(self, module: nn.Module, **options: Any) -> None:
        super().__init__()
        self.module = module
        object.__setattr__(self, "_compiled", torch.compile(module, **options))  # not a second submodule

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is not None:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - only compiler failures fall back, the rest re-raise
                if not _compile_failure(exc):
                    raise
                warnings.warn(f"torch.compile failed, running eagerly: {first_line(exc)}", RuntimeWarning,
                              stacklevel=2)
                object.__setattr__(self, "_compiled", None)
        return self.module(*args, **kwargs)


def maybe_compiled(module: nn.Module, enabled: bool) -> nn.Module:
    """``Compiled(module)`` when ``enabled``, else ``module`` itself."""
    return Compiled(module) if enabled else module
