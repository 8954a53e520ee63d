"""scikit-learn's handwritten digits (1797 8x8 images, 10 classes): ships with scikit-learn, so it
is the offline default. The train/test split is fixed and stratified (75/25, seed 0)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from proqha.data.registry import register_dataset

TEST_FRACTION = 0.25
SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED)
    mean, std = float(x_tr.mean()), float(x_tr.std())
    return {"train": ((x_tr - mean) / std, y_tr), "test": ((x_te - mean) / std, y_te)}


@register_dataset(num_classes=10, input_size=(1, 8, 8), default_arch="digits_resnet", needs_data_dir=False)
def digits(data_dir: Path | None, split: str, download: bool) -> Dataset:
    """Handwritten digits from scikit-learn (offline, the default)."""
    x, y = _arrays()["test" if split == "test" else "train"]
    return TensorDataset(torch.from_numpy(x).unsqueeze(1).contiguous(), torch.from_numpy(y))
