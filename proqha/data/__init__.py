"""Dataset registry: digits (offline default), digits_hard (its augmented, larger variant), mnist, cifar10, cifar100,
imagefolder; ``DataSource``: where a run's data comes from."""

from proqha.data import digits, digits_hard, vision  # noqa: F401  (registration)
from proqha.data.registry import (
    DatasetSpec,
    check_data_dir,
    checkpoint_calibration_images,
    checkpoint_test_loader,
    get_dataset_spec,
    list_datasets,
    load_dataset,
    register_dataset,
)
from proqha.data.source import DataSource

__all__ = ["DataSource", "DatasetSpec", "checkpoint_calibration_images", "checkpoint_test_loader", "check_data_dir", "get_dataset_spec", "list_datasets", "load_dataset", "register_dataset"]
