"""The README's Python API example runs as written, on a user's own small network and loaders."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_api_example() -> str:
    """The first Python block after the README's "Bring your own model and data" heading."""
    text = README.read_text()
    section = text[text.index("## Bring your own model and data"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README lost its Python API example"
    return match.group(1)


def _user_objects() -> dict:
    """What the example assumes the user has: a float network and loaders of 3x32x32 images in 4 classes."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(96) % 4
    x = torch.randn(96, 3, 32, 32, generator=gen) * 0.3
    x[:, y % 3, :16] += 1.0  # a learnable signal per class
    x[y == 3, :, 16:] -= 1.0
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    data = TensorDataset(x, y)
    return {"my_net": net, "train_loader": DataLoader(data, batch_size=32, shuffle=True),
            "calib_loader": DataLoader(TensorDataset(x[:32], y[:32]), batch_size=32),
            "test_loader": DataLoader(TensorDataset(x[64:], y[64:]), batch_size=32)}


def test_the_readme_api_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = _user_objects()
    exec(compile(readme_api_example(), "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model.parity.json").is_file()
    assert scope["report"].ok
    assert scope["result"].steps and scope["result"].steps[-1]["cost"] <= scope["result"].steps[0]["cost"]
    assert {row["batch"] for row in scope["rows"]} == {1, 8}
