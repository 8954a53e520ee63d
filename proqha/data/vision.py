"""Datasets in torchvision's on-disk formats (MNIST, CIFAR-10/100) and ImageNet-style folders."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from torch.utils.data import Dataset

from proqha.data.registry import register_dataset
from proqha.errors import OptionError, ProqhaError

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


@register_dataset(num_classes=1000, input_size=(3, 224, 224), default_arch="resnet18")
def imagefolder(data_dir: Path, split: str, download: bool) -> Dataset:
    """ImageNet layout: --data-dir/train/<class>/*.jpeg and --data-dir/val/<class>/*.jpeg."""
    if download:
        raise OptionError("download", "is not possible for imagefolder; point data_dir at a folder with train/ and val/",
                          others=("data_dir",))
    folder = data_dir / ("val" if split == "test" else "train")
    if not folder.is_dir():
        raise ProqhaError(f"image folder missing: {folder} (expected {data_dir}/train and {data_dir}/val)")
    T = _torchvision().transforms
    if split == "train":
        tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(*_IMAGENET_STATS)])
    else:
        tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(*_IMAGENET_STATS)])
    try:
        return _torchvision().datasets.ImageFolder(str(folder), transform=tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise ProqhaError(f"image folder {folder} is malformed: {exc}") from None
