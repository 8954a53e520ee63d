"""Dataset registry: each entry builds a split (``train``/``test``) as a torch Dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

from proqha.errors import ProqhaError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: how to build a split, and the shape of what it yields."""

    name: str
    build: Callable[[Path | None, str, bool], Dataset]
    num_classes: int
    input_size: tuple[int, int, int]
    needs_data_dir: bool
    default_arch: str
    description: str


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(num_classes: int, input_size: tuple[int, int, int], default_arch: str,
                     needs_data_dir: bool = True) -> Callable:
    """Register ``fn(data_dir, split, download) -> Dataset`` under its function name."""

    def wrap(fn: Callable[[Path | None, str, bool], Dataset]) -> Callable:
        doc = (fn.__doc__ or "").strip().splitlines()
        _DATASETS[fn.__name__] = DatasetSpec(fn.__name__, fn, num_classes, input_size, needs_data_dir,
                                             default_arch, doc[0] if doc else "")
        return fn

    return wrap


def list_datasets() -> list[str]:
    """Names of all registered datasets."""
    return sorted(_DATASETS)


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec of a registered dataset (ProqhaError for an unknown name)."""
    try:
        return _DATASETS[name]
    except KeyError:
        raise ProqhaError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}") from None


def load_dataset(name: str, split: str, data_dir: str | Path | None = None, download: bool = False) -> Dataset:
    """Build one split of a registered dataset; a missing or malformed folder is one ProqhaError."""
    spec = get_dataset_spec(name)
    if split not in SPLITS:
        raise ProqhaError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    path = Path(data_dir) if data_dir is not None else None
    if spec.needs_data_dir:
        if path is None:
            raise ProqhaError(f"dataset {name!r} needs --data-dir (the folder holding its files)")
        if not path.exists() and not download:
            raise ProqhaError(f"data directory not found: {path} (pass --download to fetch {name!r} there)")
        if path.exists() and not path.is_dir():
            raise ProqhaError(f"data directory is not a folder: {path}")
    return spec.build(path, split, download)
