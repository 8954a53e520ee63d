"""Dataset registry: the embedded default and clear errors for folders that are not there."""

from __future__ import annotations

from collections import Counter

import pytest

from proqha.data import list_datasets, load_dataset
from proqha.errors import ProqhaError


def _labels(ds) -> list[int]:
    return [int(ds[i][1]) for i in range(len(ds))]


def test_digits_split_is_fixed_and_stratified():
    train, calib, test = (load_dataset("digits", s) for s in ("train", "calib", "test"))
    assert len(train) + len(calib) + len(test) == 1797 and len(test) == 450 and len(calib) == 134
    x, y = train[0]
    assert tuple(x.shape) == (1, 8, 8)
    train_counts = Counter(_labels(train)) + Counter(_labels(calib))
    test_counts = Counter(_labels(test))
    for cls in range(10):
        share = test_counts[cls] / (train_counts[cls] + test_counts[cls])
        assert share == pytest.approx(0.25, abs=0.02)
    assert _labels(load_dataset("digits", "test")) == _labels(test)
    # the calibration split is held out of training, and fixed
    assert not set(calib.indices) & set(train.indices)
    assert load_dataset("digits", "calib").indices == calib.indices


def test_registry_lists_the_documented_datasets():
    assert set(list_datasets()) == {"digits", "digits_hard", "mnist", "cifar10", "cifar100", "imagefolder"}


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100", "imagefolder"])
def test_missing_data_dir_is_one_clear_error(name, tmp_path):
    with pytest.raises(ProqhaError, match="not found"):
        load_dataset(name, "train", tmp_path / "absent")
    with pytest.raises(ProqhaError, match="needs data_dir"):
        load_dataset(name, "train", None)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "imagefolder"])
def test_empty_data_dir_is_one_clear_error(name, tmp_path):
    with pytest.raises(ProqhaError, match="not found or malformed|missing"):
        load_dataset(name, "test", tmp_path)


def test_file_instead_of_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ProqhaError, match="not a folder"):
        load_dataset("cifar10", "train", f)
