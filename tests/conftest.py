"""Shared fixtures: small real data and models, no downloads."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def calibrate_bn(model: torch.nn.Module, x: torch.Tensor, passes: int = 2) -> torch.nn.Module:
    """Give BatchNorm realistic running statistics so an eval-mode random model has sane outputs."""
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(x)
    return model.eval()
