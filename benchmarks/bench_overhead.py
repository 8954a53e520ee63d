"""The benchmark's own overhead (timer and Python dispatch) against the smallest model's median latency.

    python benchmarks/bench_overhead.py

A runtime whose run() returns at once is timed by the same `measure` as real engines; its median is the
per-call overhead. The smallest model is digits_resnet (8 bit) on onnxruntime at batch 1. Must stay < 5%.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

from proqha.deploy.latency import measure
from proqha.deploy.runtime import WallClockTimed
from proqha.deploy.runtime_ort import OrtRuntime
from proqha.export.onnx_export import export_onnx
from proqha.models import create_model
from proqha.quant import quantize_model


class NullRuntime(WallClockTimed):
    name = "null"

    def __init__(self, out: np.ndarray) -> None:
        self.out = out

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.out

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name}


def main() -> int:
    torch.manual_seed(0)
    model = quantize_model(create_model("digits_resnet")).eval()
    model(torch.randn(16, 1, 8, 8))
    proto, _ = export_onnx(model, (1, 8, 8))
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    ort = OrtRuntime(proto.SerializeToString())
    null = NullRuntime(ort.run(x))
    rounds = []
    for _ in range(5):  # alternate, so both see the same machine
        rounds.append((measure(null, x, 20, 2000).median_ms, measure(ort, x, 20, 500).median_ms))
    overhead = float(np.median([o for o, _ in rounds]))
    model_ms = float(np.median([m for _, m in rounds]))
    print(f"timer + dispatch overhead per call: {overhead * 1e3:.2f} us (median of 5 x 2000 calls)")
    print(f"digits_resnet int8, onnxruntime, batch 1: {model_ms * 1e3:.1f} us median")
    print(f"overhead / smallest model latency: {100 * overhead / model_ms:.2f}%  (must stay < 5%)")
    if overhead / model_ms >= 0.05:
        print("MISS: the timer's own overhead is 5% or more of the smallest model's latency")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
