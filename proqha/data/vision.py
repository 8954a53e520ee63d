"""Datasets in torchvision's on-disk formats (MNIST, CIFAR-10/100) and ImageNet-style folders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
from torch.utils.data import Dataset

from proqha.data.registry import register_dataset
from proqha.errors import OptionError, ProqhaError, first_line

if TYPE_CHECKING:
    import torchvision.transforms as T


def _torchvision() -> ModuleType:
    """torchvision, imported when a dataset is opened: it takes seconds (it loads torch._dynamo)."""
    import torchvision
    import torchvision.transforms  # noqa: F401

    return torchvision

_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _open(factory, name: str, root: Path, **kwargs) -> Dataset:
    try:
        return factory(root=str(root), **kwargs)
    except RuntimeError as exc:
        raise OptionError("data_dir", f"{root}: {name} not found or malformed ({exc}); download fetches it",
                          others=("download",)) from None


def _cifar_transform(split: str, stats) -> T.Compose:
    T = _torchvision().transforms
    aug = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if split == "train" else []
    return T.Compose([*aug, T.ToTensor(), T.Normalize(*stats)])


@register_dataset(num_classes=10, input_size=(1, 28, 28), default_arch="digits_resnet")
def mnist(data_dir: Path, split: str, download: bool) -> Dataset:
    """MNIST in torchvision's format under --data-dir."""
    tv = _torchvision()
    tf = tv.transforms.Compose([tv.transforms.ToTensor(), tv.transforms.Normalize((0.1307,), (0.3081,))])
    return _open(tv.datasets.MNIST, "MNIST", data_dir, train=split != "test", download=download,
                 transform=tf)


@register_dataset(num_classes=10, input_size=(3, 32, 32), default_arch="resnet20_post")
def cifar10(data_dir: Path, split: str, download: bool) -> Dataset:
    """CIFAR-10 in torchvision's format under --data-dir."""
    return _open(_torchvision().datasets.CIFAR10, "CIFAR-10", data_dir, train=split != "test", download=download,
                 transform=_cifar_transform(split, _CIFAR10_STATS))


@register_dataset(num_classes=100, input_size=(3, 32, 32), default_arch="resnet20_post")
def cifar100(data_dir: Path, split: str, download: bool) -> Dataset:
    """CIFAR-100 in torchvision's format under --data-dir."""
    return _open(_torchvision().datasets.CIFAR100, "CIFAR-100", data_dir, train=split != "test",
                 download=download, transform=_cifar_transform(split, _CIFAR100_STATS))


IMAGE_SIZE = 224  # imagefolder's default crop
CROP_FRACTION = 0.875  # the test images: resized to N / 0.875, then the center N
VAL_SEED = 0  # the fixed hold-out of val_split


@dataclass(frozen=True)
class _Layout:
    """An image folder, checked: its classes and the (path, class index) samples of each file set."""

    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...]


def _visible(entries: Iterable[os.DirEntry]) -> list[os.DirEntry]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _class_dirs(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return [e for e in _visible(it) if e.is_dir()]


def _images(folder: Path) -> list[str]:
    """Every non-hidden file under a class folder (sorted, recursively), each checked to be an image PIL can
    open (its header only); one ProqhaError line naming the first that is not, or the folder when empty."""
    from PIL import Image, UnidentifiedImageError

    files: list[str] = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
    if not files:
        raise ProqhaError(f"imagefolder: class folder {folder} holds no images")
    for path in files:
        try:
            with Image.open(path):
                pass
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise ProqhaError(f"imagefolder: {path} is not an image PIL can read ({first_line(exc, 120)})") from None
    return files


def _samples(folder: Path, classes: tuple[str, ...] | None = None) -> tuple[tuple[str, ...], list[tuple[str, int]]]:
    """The classes (sorted folder names) of one file set and its samples; ``classes``: those they must equal."""
    found = tuple(e.name for e in _class_dirs(folder))
    if not found:
        raise ProqhaError(f"imagefolder: {folder} has no class folders (expected {folder}/<class>/<image>)")
    if classes is not None and found != classes:
        extra, missing = sorted(set(found) - set(classes)), sorted(set(classes) - set(found))
        raise ProqhaError(f"imagefolder: the classes of {folder} differ from train/'s"
                          f"{' (extra: ' + ', '.join(extra) + ')' if extra else ''}"
                          f"{' (missing: ' + ', '.join(missing) + ')' if missing else ''}")
    return found, [(path, i) for i, name in enumerate(found) for path in _images(folder / name)]


def _folder_key(data_dir: Path) -> tuple:
    """What the cached layout of ``data_dir`` depends on: its path and the times its folders changed."""
    key: list[Any] = [str(data_dir.resolve())]
    for part in ("train", "val"):
        folder = data_dir / part
        if folder.is_dir():
            key += [(part, folder.stat().st_mtime_ns)] + [(e.name, e.stat().st_mtime_ns) for e in _class_dirs(folder)]
    return tuple(key)


def image_layout(data_dir: Path, val_split: float | None = None) -> _Layout:
    """The checked layout of an image folder: ``train/<class>/*`` and ``val/<class>/*`` (the same classes),
    or with ``val_split`` F and no ``val/``, a fixed seeded F of train/'s files as the test set."""
    train_dir, val_dir = data_dir / "train", data_dir / "val"
    if not train_dir.is_dir():
        raise ProqhaError(f"image folder missing: {train_dir} (expected {data_dir}/train and {data_dir}/val)")
    if val_split is not None and val_dir.is_dir():
        raise OptionError("val_split", f"holds out part of train/ when there is no val/, but {val_dir} exists "
                                       "(leave val_split out to test on it)", others=("val_split",))
    if val_split is None and not val_dir.is_dir():
        raise OptionError("data_dir", f"{data_dir} has no val/ folder: add {val_dir}, or pass val_split to hold out "
                                      "part of train/", others=("val_split",))
    return _cached_layout(_folder_key(data_dir), data_dir, val_split)


@lru_cache(maxsize=8)
def _cached_layout(key: tuple, data_dir: Path, val_split: float | None) -> _Layout:
    classes, train = _samples(data_dir / "train")
    if val_split is not None:
        n = len(train)
        n_val = min(max(1, round(n * val_split)), n - 1)
        if n_val < 1:
            raise OptionError("val_split", f"needs at least 2 images in {data_dir}/train, found {n}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SEED)).tolist()
        held = set(order[:n_val])
        return _Layout(classes, tuple(s for i, s in enumerate(train) if i not in held),
                       tuple(s for i, s in enumerate(train) if i in held))
    _, test = _samples(data_dir / "val", classes)
    return _Layout(classes, tuple(train), tuple(test))


class ImageFiles(Dataset):
    """(path, class index) samples read as RGB images (grayscale, RGBA and palette files converted), then
    ``transform``ed."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], transform: Callable) -> None:
        self.samples, self.classes, self.transform = list(samples), list(classes), transform
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
        except (OSError, SyntaxError, ValueError) as exc:  # PIL: a truncated or corrupt file past its header
            raise ProqhaError(f"cannot read image {path}: {first_line(exc)}") from None
        return self.transform(rgb), label


def _imagefolder_describe(data_dir: Path, image_size: int | None = None, val_split: float | None = None
                          ) -> dict[str, Any]:
    """The spec of an image folder: its classes, and input (3, N, N)."""
    classes = image_layout(data_dir, val_split).classes
    n = image_size or IMAGE_SIZE
    return {"num_classes": len(classes), "class_names": classes, "input_size": (3, n, n)}


@register_dataset(num_classes=1000, input_size=(3, IMAGE_SIZE, IMAGE_SIZE), default_arch="resnet18",
                  options=("image_size", "val_split"), describe=_imagefolder_describe)
def imagefolder(data_dir: Path, split: str, download: bool, image_size: int | None = None,
                val_split: float | None = None) -> Dataset:
    """ImageNet layout: --data-dir/train/<class>/* and --data-dir/val/<class>/* (or --val-split)."""
    if download:
        raise OptionError("download", "is not possible for imagefolder; point data_dir at a folder with train/ and val/",
                          others=("data_dir",))
    layout = image_layout(data_dir, val_split)
    n = image_size or IMAGE_SIZE
    T = _torchvision().transforms
    if split == "train":
        tf = T.Compose([T.RandomResizedCrop(n), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(*_IMAGENET_STATS)])
    else:
        tf = T.Compose([T.Resize(round(n / CROP_FRACTION)), T.CenterCrop(n), T.ToTensor(),
                        T.Normalize(*_IMAGENET_STATS)])
    return ImageFiles(layout.test if split == "test" else layout.train, layout.classes, tf)
