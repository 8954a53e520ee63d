"""Dataset registry: each entry builds a split as a torch Dataset.

Builders know two file sets, ``train`` and ``test``, and a third view ``train-eval`` (the training files
with evaluation transforms). The registry carves a fixed calibration split out of the training files:
``calib`` (10%, at most 5000 samples, seed 0) is held out from ``train``, so a search can score
candidates on data that neither training nor the test set uses. A builder registered with ``own_calib``
makes its ``calib`` split itself (from originals that no training image derives from).

A name of the form ``package.module:factory`` is the user's own dataset factory (``proqha.data.custom``):
the same three splits, carved the same way unless the factory returns its own ``calib``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable
from urllib.error import URLError

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from proqha.errors import OptionError, ProqhaError
from proqha.imports import is_import_path

SPLITS = ("train", "calib", "test")
CALIB_FRACTION = 0.1
CALIB_MAX = 5000
CALIB_SEED = 0


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: how to build a split, and the shape of what it yields."""

    name: str
    build: Callable[..., Dataset]
    num_classes: int
    input_size: tuple[int, int, int]
    needs_data_dir: bool
    default_arch: str | None
    description: str
    class_names: tuple[str, ...] | None = None
    options: tuple[str, ...] = ()  # the options its builder takes as keywords (image_size, val_split)
    describe: Callable[..., dict[str, Any]] | None = None  # (data_dir, **options) -> fields of the spec there
    own_calib: bool = False  # its builder makes the calib split itself (held-out originals), not the registry


_DATASETS: dict[str, DatasetSpec] = {}
DATA_OPTIONS = ("image_size", "val_split")  # options only some datasets take


def register_dataset(num_classes: int, input_size: tuple[int, int, int], default_arch: str,
                     needs_data_dir: bool = True, options: tuple[str, ...] = (),
                     describe: Callable[..., dict[str, Any]] | None = None, own_calib: bool = False) -> Callable:
    """Register ``fn(data_dir, split, download, **options) -> Dataset`` under its function name. ``options``:
    the keywords of ``DATA_OPTIONS`` it takes; ``describe(data_dir, **options)``: the spec's fields that depend
    on the folder (num_classes, input_size, class_names), checking it; ``own_calib``: ``fn`` builds the
    ``calib`` split itself, and its ``train`` split is the training images without it."""

    def wrap(fn: Callable[..., Dataset]) -> Callable:
        doc = (fn.__doc__ or "").strip().splitlines()
        _DATASETS[fn.__name__] = DatasetSpec(fn.__name__, fn, num_classes, input_size, needs_data_dir,
                                             default_arch, doc[0] if doc else "", None, options, describe,
                                             own_calib)
        return fn

    return wrap


def check_data_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options given (not None) that dataset ``name`` takes; OptionError naming one it does not take."""
    given = {k: v for k, v in options.items() if v is not None}
    takes = () if is_import_path(name) else get_dataset_spec(name).options
    for key in given:
        if key not in takes:
            users = ", ".join(n for n, s in sorted(_DATASETS.items()) if key in s.options) or "no dataset"
            raise OptionError(key, f"applies to {users} only, not dataset {name!r}", others=("dataset",))
    return given


def list_datasets() -> list[str]:
    """Names of all registered datasets."""
    return sorted(_DATASETS)


def get_dataset_spec(name: str, data_dir: str | Path | None = None, **options: Any) -> DatasetSpec:
    """The spec of a registered dataset, or of a ``module:factory`` import path (whose factory is called,
    with ``data_dir``, and checked); ProqhaError for an unknown name or a bad factory. A dataset that reads
    its classes and sizes from its folder (imagefolder) describes ``data_dir`` with ``options``
    (``DATA_OPTIONS``), checking the folder."""
    given = check_data_options(name, options) if any(v is not None for v in options.values()) else {}
    if is_import_path(name):
        from proqha.data.custom import load_splits

        splits = load_splits(name, None if data_dir is None else str(data_dir))
        return DatasetSpec(name, lambda path, split, download: splits.test if split == "test" else splits.train, splits.num_classes,
                           splits.input_size, False, None, f"user dataset {name}")
    try:
        spec = _DATASETS[name]
    except KeyError:
        raise ProqhaError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}") from None
    if spec.describe is not None and data_dir is not None:
        return replace(spec, **spec.describe(Path(data_dir), **given))
    return spec


def load_dataset(name: str, split: str, data_dir: str | Path | None = None, download: bool = False,
                 **options: Any) -> Dataset:
    """Build one split of a registered (or import-path) dataset; a missing or malformed folder is one
    ProqhaError. ``options``: ``DATA_OPTIONS`` the dataset takes (None: its default; OptionError for one it
    does not take)."""
    if split not in SPLITS:
        raise ProqhaError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    path = check_data_dir(name, data_dir, download)
    given = check_data_options(name, options)
    if is_import_path(name):
        from proqha.data.custom import load_splits

        splits = load_splits(name, None if path is None else str(path))
        if split == "test":
            return splits.test
        if splits.calib is not None:  # the factory's own held-out split
            return splits.calib if split == "calib" else splits.train
        calib_idx, train_idx = calibration_split(len(splits.train))
        return Subset(splits.train, train_idx if split == "train" else calib_idx)
    spec = get_dataset_spec(name)
    created = path is not None and not path.exists()
    try:
        if split == "test" or spec.own_calib:
            return spec.build(path, split, download, **given)
        full = spec.build(path, "train" if split == "train" else "train-eval", download, **given)
    except URLError as exc:  # --download without a network
        if created:  # the folder the download began: nothing of the user's is in it
            shutil.rmtree(path, ignore_errors=True)
        raise OptionError("download", f"could not fetch {name!r} into {path}: {exc.reason}") from None
    calib_idx, train_idx = calibration_split(len(full))
    return Subset(full, train_idx if split == "train" else calib_idx)


def check_data_dir(name: str, data_dir: str | Path | None, download: bool = False) -> Path | None:
    """The data folder of a dataset, checked without reading it (ProqhaError when missing or not a folder).
    An import-path dataset needs none; one given to it must exist."""
    path = Path(data_dir) if data_dir is not None else None
    if is_import_path(name):
        if path is not None and not path.is_dir():
            raise ProqhaError(f"data directory not found: {path}")
        return path
    spec = get_dataset_spec(name)
    if spec.needs_data_dir:
        if path is None:
            raise OptionError("dataset", f"{name!r} needs data_dir (the folder holding its files)", others=("data_dir",))
        if not path.exists() and not download:
            raise OptionError("data_dir", f"not found: {path} (download fetches {name!r} there)", others=("download",))
        if path.exists() and not path.is_dir():
            raise ProqhaError(f"data directory is not a folder: {path}")
    return path


def calibration_split(n: int) -> tuple[list[int], list[int]]:
    """Fixed (calibration, training) index lists over ``n`` training samples."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(CALIB_SEED)).tolist()
    n_calib = min(max(1, int(n * CALIB_FRACTION)), CALIB_MAX)
    return sorted(order[:n_calib]), sorted(order[n_calib:])


def checkpoint_test_loader(checkpoint: Any, samples: int | None, batch_size: int = 64) -> DataLoader:
    """The first ``samples`` (None: all) test images of the dataset a checkpoint (``proqha.checkpoint.
    Checkpoint``) was trained on (its ``DataSource``: the same images at the same size), in batches."""
    from proqha.data.source import DataSource

    test = DataSource.from_dict(checkpoint.data).load("test")
    if samples is not None:
        test = Subset(test, range(min(samples, len(test))))
    return DataLoader(test, batch_size=batch_size, shuffle=False)


def checkpoint_calibration_images(checkpoint: Any, samples: int) -> torch.Tensor:
    """The first ``samples`` images of a checkpoint's calibration split (held out of training, with the
    evaluation transform): what a post-training quantizer calibrates on, never test images."""
    from proqha.data.source import DataSource

    calib = DataSource.from_dict(checkpoint.data).load("calib")
    return torch.stack([calib[i][0] for i in range(min(samples, len(calib)))])
