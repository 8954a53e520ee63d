"""proqha: ProQHA progressive mixed-precision quantization, from QAT to deployable QDQ graphs.

The Python API (``proqha.api``), one call per stage on your own model and data: ``quantize``, ``fit``,
``evaluate``, ``search_bits``, ``export_onnx``, ``bench``, and ``load_weights`` (a proqha checkpoint or run
folder, a plain state dict file, or a training script's checkpoint, into your model); ``DataSplits`` is what a
``--dataset module:factory`` returns; ``OutputOf`` picks one output of a model that returns a dict or tuple, ``DetectionHeads`` the
int8 part of a one-stage detector. They load on first use, so ``import proqha`` imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {"quantize": "proqha.api", "fit": "proqha.api", "evaluate": "proqha.api", "search_bits": "proqha.api",
        "export_onnx": "proqha.api", "bench": "proqha.api", "SearchResult": "proqha.api",
        "ExportError": "proqha.errors", "DataSplits": "proqha.data.custom", "ProqhaError": "proqha.errors",
        "load_weights": "proqha.api", "OutputOf": "proqha.models.outputs",
        "DetectionHeads": "proqha.models.outputs"}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'proqha' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
