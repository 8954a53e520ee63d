"""The user's own data, by import path: ``--dataset my_pkg.data:make_data``.

The factory is called as ``make_data()`` or, when its signature names it, ``make_data(data_dir=...)``
(the ``--data-dir`` option, None when not given), and returns a ``DataSplits`` (or a dict with the same
keys). Its result is checked once and cached per process.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Callable, Mapping

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from proqha.errors import OptionError, ProqhaError
from proqha.imports import call_factory, import_callable

OPTION = "dataset"
CHECKED_SAMPLES = 32  # samples of each split whose shape and label are checked up front


@dataclass
class DataSplits:
    """What a dataset factory returns.

    train, test: map-style datasets (``len`` and ``[i]``) yielding ``(image tensor, class index)``, or for
        segmentation ``(image tensor, (height, width) integer mask of class indices)``; the first 32
        samples of each are checked against ``input_size`` and ``num_classes``.
    num_classes: how many classes the labels range over (0..num_classes-1).
    input_size: (channels, height, width) of one image; default: the first training image's shape.
    calib: held-out calibration data for ``search --criterion acc``; default: a fixed 10% of ``train``
        (held out of training, as for the built-in datasets).
    """

    train: Dataset
    test: Dataset
    num_classes: int
    input_size: tuple[int, int, int] | None = None
    calib: Dataset | None = None


def load_splits(path: str, data_dir: str | None = None) -> DataSplits:
    """Import the factory ``path`` names, call it and check what it returns (ProqhaError, one line)."""
    return _load(import_callable(path, OPTION), path, data_dir)


@lru_cache(maxsize=4)
def _load(factory: Callable[..., Any], path: str, data_dir: str | None) -> DataSplits:
    return check_splits(call_factory(factory, path, OPTION, data_dir=data_dir), str(path))


def check_splits(result: Any, where: str) -> DataSplits:
    """``result`` as a checked DataSplits: datasets with samples, and first samples of the declared shape."""
    if isinstance(result, Mapping):
        names = {f.name for f in fields(DataSplits)}
        unknown = sorted(set(result) - names)
        missing = sorted(n for n in ("train", "test", "num_classes") if n not in result)
        if unknown or missing:
            raise OptionError(OPTION, f"{where} returned a dict with {'unknown keys ' + ', '.join(unknown) if unknown else ''}"
                              f"{'; ' if unknown and missing else ''}"
                              f"{'no ' + ', '.join(missing) if missing else ''}; expected train, test, num_classes "
                              "and optionally input_size, calib")
        result = DataSplits(**result)
    if not isinstance(result, DataSplits):
        raise OptionError(OPTION, f"{where} returned {type(result).__name__}; expected proqha.DataSplits(train, test, "
                          "num_classes, ...) or a dict with those keys")
    if isinstance(result.num_classes, bool) or not isinstance(result.num_classes, int) or result.num_classes < 1:
        raise OptionError(OPTION, f"{where}: num_classes must be a positive int, got {result.num_classes!r}")
    splits = {"train": result.train, "test": result.test} | ({"calib": result.calib} if result.calib is not None else {})
    for name, data in splits.items():
        if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
            raise OptionError(OPTION, f"{where}: {name} is a {type(data).__name__}, not a map-style dataset (len and [i])")
        if len(data) == 0:
            raise OptionError(OPTION, f"{where}: the {name} split is empty")
    input_size = result.input_size
    if input_size is None:
        input_size = _first_sample(result.train, "train", where)[0].shape
    input_size = tuple(input_size)
    if len(input_size) != 3 or not all(isinstance(v, int) and v > 0 for v in input_size):
        raise OptionError(OPTION, f"{where}: input_size must be (channels, height, width), got {input_size}")
    for name, data in splits.items():
        for i in range(min(len(data), CHECKED_SAMPLES)):
            x, y = _sample(data, i, name, where)
            if tuple(x.shape) != input_size:
                raise OptionError(OPTION, f"{where}: {name} images have shape {tuple(x.shape)}, expected input_size "
                                  f"{input_size}")
            if not is_label(y, result.num_classes, input_size[1:]):
                raise _label_error(where, name, result.num_classes, _shown(y), i)
        bad = first_bad_label(data, result.num_classes, scan=False)
        if bad is not None:
            raise _label_error(where, name, result.num_classes, bad[1], bad[0])
    return DataSplits(result.train, result.test, result.num_classes, input_size, result.calib)


def _label_error(where: str, name: str, num_classes: int, label: Any, index: int) -> ProqhaError:
    return OptionError(OPTION, f"{where}: {name} labels must be class indices in 0..{num_classes - 1}, got "
                               f"{label!r} at {name}[{index}]")


def is_label(y: Any, num_classes: int, spatial: tuple[int, ...]) -> bool:
    """Whether one sample's label is a class index, or an integer mask of class indices over the image's
    height and width (``spatial``: a segmentation label)."""
    if isinstance(y, torch.Tensor) and y.dim() >= 2:
        return tuple(y.shape) == tuple(spatial) and not (y.is_floating_point() or y.is_complex()) and \
            not bool(outside_classes(y, num_classes).any())
    return is_class_index(_scalar(y), num_classes)


def _shown(y: Any) -> Any:
    """A label as an error line shows it: a mask by its shape, dtype and range."""
    if isinstance(y, torch.Tensor) and y.dim() >= 2:
        return f"a {tuple(y.shape)} {str(y.dtype).removeprefix('torch.')} mask with values {y.min().item()}..{y.max().item()}"
    return _scalar(y)


def _scalar(y: Any) -> Any:
    """A one-element tensor label as a Python number; anything else as it is."""
    return y.item() if isinstance(y, torch.Tensor) and y.numel() == 1 else y


def is_class_index(label: Any, num_classes: int) -> bool:
    """Whether one label is an integer class index in 0..num_classes-1 (a bool is not)."""
    return not isinstance(label, bool) and isinstance(label, numbers.Integral) and 0 <= label < num_classes


def outside_classes(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Which entries of an integer label tensor are not class indices in 0..num_classes-1 (a bool mask)."""
    return (labels < 0) | (labels >= num_classes)


def _label_tensor(data: Dataset) -> torch.Tensor | None:
    """All labels of a dataset that holds them as one tensor (TensorDataset, a Subset of one, or a
    ``targets`` attribute as torchvision's datasets have), without reading any image; else None."""
    if isinstance(data, Subset):
        inner = _label_tensor(data.dataset)
        return None if inner is None else inner[torch.as_tensor(list(data.indices), dtype=torch.long)]
    if type(data) is TensorDataset and len(data.tensors) >= 2:  # a subclass may change what [i] returns
        return data.tensors[1]
    targets = getattr(data, "targets", None)
    if getattr(data, "target_transform", None) is None and isinstance(targets, (list, tuple, torch.Tensor)) \
            and len(targets) == len(data):  # type: ignore[arg-type]
        try:
            return torch.as_tensor(targets)
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


SCAN_LIMIT = 100_000  # datasets up to this size are read sample by sample to find a bad label


def first_bad_label(data: Dataset, num_classes: int, scan: bool = True) -> tuple[int, Any] | None:
    """(index, label) of the first sample whose label is not a class index in 0..num_classes-1, or None;
    the index is that of the dataset a ``Subset`` wraps. Labels held as one tensor are checked all at once;
    otherwise, with ``scan``, the samples of a dataset of at most ``SCAN_LIMIT`` are read."""
    found = None
    labels = _label_tensor(data)
    if labels is not None and labels.dim() == 1 and not (labels.is_floating_point() or labels.is_complex()):
        bad = outside_classes(labels, num_classes).nonzero()
        found = (int(bad[0]), int(labels[bad[0]])) if len(bad) else None
    elif labels is not None and labels.dim() > 1 and not (labels.is_floating_point() or labels.is_complex()):
        bad = outside_classes(labels, num_classes).flatten(1).any(1).nonzero()  # masks: the first bad one
        found = (int(bad[0]), _shown(labels[int(bad[0])])) if len(bad) else None
    elif labels is None and scan and len(data) <= SCAN_LIMIT:  # type: ignore[arg-type]
        found = next(((i, label) for i in range(len(data))  # type: ignore[arg-type]
                      if not is_class_index(label := _scalar(data[i][1]), num_classes)), None)
    if found is not None and isinstance(data, Subset):  # the subset's position, as an index of what it wraps
        found = (int(data.indices[found[0]]), found[1])
    return found


def _first_sample(data: Dataset, name: str, where: str) -> tuple[torch.Tensor, Any]:
    return _sample(data, 0, name, where)


def _sample(data: Dataset, i: int, name: str, where: str) -> tuple[torch.Tensor, Any]:
    try:
        sample = data[i]
    except Exception as exc:  # noqa: BLE001 - user datasets can raise anything
        raise OptionError(OPTION, f"{where}: reading {name}[{i}] raised {type(exc).__name__}: {exc}") from exc
    if not (isinstance(sample, (tuple, list)) and len(sample) == 2):
        raise OptionError(OPTION, f"{where}: {name}[{i}] is a {type(sample).__name__}; expected an (image, label) pair")
    x, y = sample
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise OptionError(OPTION, f"{where}: {name} images must be float tensors, got "
                          f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    return x, y
