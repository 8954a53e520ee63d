"""A harder, larger offline digits benchmark, built from scikit-learn's digits by seeded augmentation.

Why: scikit-learn's digits has only 450 test images, so one image is 0.22 points of top-1 and a search's
0.2-point differences drown in the noise of a single image. ``digits_hard`` keeps the offline 8x8 setup
(same input size, same ``digits_resnet``) but gives >10,000 test images and a task hard enough that low
bit widths visibly lose accuracy.

How: the 1797 original images are split first (stratified: 40% test, then 20% of the rest calibration, seed 0),
so no test or calibration image derives from a training original: the calibration split (what a search
scores its candidates on) measures generalisation as the test split does. Each original then yields
augmented variants (``VARIANTS`` per split) from a fixed-seed numpy Generator: an affine jitter (rotation, scale,
shear, a shift of about a pixel; bilinear, zero outside), a contrast change, an erased rectangle and
additive Gaussian noise. The arithmetic is plain numpy float64, so the same seed gives the same bytes.
Images are normalised with the mean and std of the train split, like ``digits``. Each split is
variant-major: the first 719 test images are one variant of each test original.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from proqha.data.registry import register_dataset

TEST_FRACTION = 0.4
CALIB_FRACTION = 0.2  # of the originals left after the test split
SPLIT_SEED = 0
AUG_SEED = 0
VARIANTS = {"train": 10, "calib": 12, "test": 15}  # 862 / 216 / 719 originals -> 8620 / 2592 / 10785 images

# augmentation strength (pixels: 8x8, values 0..1)
ROTATION_DEG = 15.0
SCALE = 0.12  # scale in 1 +- SCALE
SHEAR = 0.2
SHIFT_PX = 1.0
CONTRAST = (0.6, 1.2)
OCCLUDE_P = 0.5  # chance of an erased rectangle of 2-3 x 2-3 pixels
NOISE_STD = 0.15
SIZE = 8


def _originals() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 original images (N, 8, 8) in 0..1, float64, and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float64) / 16.0, bunch.target.astype(np.int64)


def split_originals() -> dict[str, np.ndarray]:
    """Indices into ``load_digits()`` of the ``train``, ``calib`` and ``test`` originals: disjoint,
    stratified, fixed."""
    from sklearn.model_selection import train_test_split

    _, y = _originals()
    rest, test = train_test_split(np.arange(len(y)), test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED)
    train, calib = train_test_split(rest, test_size=CALIB_FRACTION, stratify=y[rest], random_state=SPLIT_SEED)
    return {"train": np.sort(train), "calib": np.sort(calib), "test": np.sort(test)}


def _bilinear(images: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``images`` (N, H, W) sampled at source coordinates ``rows``/``cols`` (N, H, W), zero outside."""
    n, h, w = images.shape
    pad = 2
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad))).reshape(n, -1)
    width = w + 2 * pad
    rows = np.clip(rows, -1.5, h - 1 + 1.5)  # beyond one pixel out, every neighbour is zero anyway
    cols = np.clip(cols, -1.5, w - 1 + 1.5)
    r0, c0 = np.floor(rows), np.floor(cols)
    wr, wc = rows - r0, cols - c0
    base = ((r0.astype(np.int64) + pad) * width + c0.astype(np.int64) + pad).reshape(n, -1)

    def at(offset: int) -> np.ndarray:
        return np.take_along_axis(padded, base + offset, axis=1).reshape(n, h, w)

    return ((1 - wr) * ((1 - wc) * at(0) + wc * at(1))
            + wr * ((1 - wc) * at(width) + wc * at(width + 1)))


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random variant of each image (N, 8, 8) in 0..1: affine jitter, contrast, erased box, noise."""
    n = len(images)
    theta = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG, n))
    scale = rng.uniform(1 - SCALE, 1 + SCALE, n)
    shear = rng.uniform(-SHEAR, SHEAR, n)
    shift = rng.uniform(-SHIFT_PX, SHIFT_PX, (n, 2))
    contrast = rng.uniform(*CONTRAST, n)
    occlude = rng.random(n) < OCCLUDE_P
    box = rng.integers(2, 4, (n, 2))  # height, width
    corner = rng.integers(0, SIZE - 1, (n, 2))  # top, left (a box may run off the edge)
    noise = rng.normal(0.0, NOISE_STD, images.shape)

    # output pixel p maps to source A (p - c) + c + shift, A = rotation @ shear / scale
    cos, sin = np.cos(theta), np.sin(theta)
    a = np.stack([np.stack([cos, cos * shear - sin], -1), np.stack([sin, sin * shear + cos], -1)], -2)
    a = a / scale[:, None, None]
    grid = np.arange(SIZE, dtype=np.float64) - (SIZE - 1) / 2
    rr, cc = np.meshgrid(grid, grid, indexing="ij")
    rows = a[:, 0, 0, None, None] * rr + a[:, 0, 1, None, None] * cc + (SIZE - 1) / 2 + shift[:, 0, None, None]
    cols = a[:, 1, 0, None, None] * rr + a[:, 1, 1, None, None] * cc + (SIZE - 1) / 2 + shift[:, 1, None, None]
    out = _bilinear(images, rows, cols) * contrast[:, None, None]

    pix = np.arange(SIZE)
    in_rows = (pix >= corner[:, :1]) & (pix < corner[:, :1] + box[:, :1])  # (N, 8)
    in_cols = (pix >= corner[:, 1:]) & (pix < corner[:, 1:] + box[:, 1:])
    out[(in_rows[:, :, None] & in_cols[:, None, :]) & occlude[:, None, None]] = 0.0
    return out + noise


def build_arrays(seed: int = AUG_SEED) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The ``train``, ``calib`` and ``test`` arrays ((N, 8, 8) float32 normalised, (N,) int64), built afresh
    (``_arrays`` caches the default). Variant-major: image ``v * n + i`` is variant v of original i."""
    x, y = _originals()
    out = {}
    for split, idx in split_originals().items():
        stream = ("train", "test", "calib").index(split)
        rng = np.random.default_rng([seed, stream])  # one stream per split: each is fixed on its own
        xs = np.tile(x[idx], (VARIANTS[split], 1, 1))
        out[split] = (augment(xs, rng), np.tile(y[idx], VARIANTS[split]))
    mean, std = out["train"][0].mean(), out["train"][0].std()
    return {k: (((v - mean) / std).astype(np.float32), t) for k, (v, t) in out.items()}


@lru_cache(maxsize=1)
def _arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return build_arrays()


@register_dataset(num_classes=10, input_size=(1, 8, 8), default_arch="digits_resnet", needs_data_dir=False,
                  own_calib=True)
def digits_hard(data_dir: Path | None, split: str, download: bool) -> Dataset:
    """Augmented digits from scikit-learn (offline): 8620 train, 2592 calib, 10785 test images, each split
    from its own originals."""
    x, y = _arrays()[split]
    return TensorDataset(torch.from_numpy(x).unsqueeze(1).contiguous(), torch.from_numpy(y))
