"""Where a run's data comes from (``DataSource``): the one description that training writes into its
checkpoints (``Checkpoint.data``) and that search, export and benchmarks read back, so they load the same
images at the same size."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from torch.utils.data import Dataset

from proqha.data.registry import DatasetSpec, check_data_dir, check_data_options, get_dataset_spec, load_dataset


@dataclass(frozen=True)
class DataSource:
    """A dataset and its options: ``dataset`` (a registered name or ``package.module:factory``),
    ``data_dir``, ``download``, and imagefolder's ``image_size`` and ``val_split`` (None: the default)."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None
    val_split: float | None = None

    def options(self) -> dict[str, Any]:
        """The dataset options that are set (``image_size``, ``val_split``)."""
        return {k: v for k, v in (("image_size", self.image_size), ("val_split", self.val_split)) if v is not None}

    def check(self) -> None:
        """The folder and options, checked without reading the data (ProqhaError; OptionError for an option
        the dataset does not take)."""
        check_data_dir(self.dataset, self.data_dir, self.download)
        check_data_options(self.dataset, self.options())

    def spec(self) -> DatasetSpec:
        """The dataset's spec here: an image folder's own classes and input size."""
        return get_dataset_spec(self.dataset, self.data_dir, **self.options())

    def load(self, split: str) -> Dataset:
        """One split (``train``, ``calib`` or ``test``)."""
        return load_dataset(self.dataset, split, self.data_dir, self.download, **self.options())

    def to_dict(self) -> dict[str, Any]:
        """What a checkpoint's ``data`` holds: the fields, and ``class_names`` when the dataset has them."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        names = self.spec().class_names
        return d | ({"class_names": list(names)} if names is not None else {})

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "DataSource":
        """The source a checkpoint's ``data`` describes (older ones hold only dataset, data_dir, download)."""
        d = d or {}
        size, split = d.get("image_size"), d.get("val_split")
        return cls(d.get("dataset") or "digits", d.get("data_dir"), bool(d.get("download", False)),
                   None if size is None else int(size), None if split is None else float(split))
