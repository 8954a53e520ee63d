"""The PyTorch quantized model itself, in eval mode: the reference point."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from proqha.deploy.runtime import WallClockTimed


class TorchRuntime(WallClockTimed):
    """Runs the quantized model eagerly on ``device`` (CUDA timing synchronises before reading the clock)."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model, self.device = model.to(device).eval(), device

    @torch.no_grad()
    def run(self, x: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)).cpu().numpy()

    @torch.no_grad()
    def timed_run(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        out = self.model(xt)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - t0
        return out.cpu().numpy(), elapsed

    def describe(self) -> dict[str, Any]:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {"engine": self.name, "torch": torch.__version__, "device": name, "threads": torch.get_num_threads()}
