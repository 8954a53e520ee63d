"""digits_hard: disjoint train/test originals, fixed bytes for a seed, the registry's splits."""

from __future__ import annotations

import numpy as np

from proqha.data import digits_hard, get_dataset_spec, load_dataset


def test_test_and_calibration_images_come_from_originals_the_training_split_never_sees():
    split = digits_hard.split_originals()
    train, calib, test = split["train"], split["calib"], split["test"]
    assert not np.intersect1d(train, test).size and not np.intersect1d(train, calib).size
    assert not np.intersect1d(calib, test).size and len(train) + len(calib) + len(test) == 1797
    _, labels = digits_hard._originals()
    assert set(np.bincount(labels[test])) <= set(range(65, 76))  # stratified: 40% of each class's 174-183
    assert set(np.bincount(labels[calib])) <= set(range(19, 24))  # 20% of the other 60%


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_images():
    first, again, other = digits_hard.build_arrays(0), digits_hard.build_arrays(0), digits_hard.build_arrays(1)
    for split in ("train", "calib", "test"):
        assert first[split][0].tobytes() == again[split][0].tobytes()
        assert np.array_equal(first[split][1], other[split][1]) and not np.allclose(first[split][0], other[split][0])
    x, y = first["test"]
    assert x.shape == (10785, 8, 8) and x.dtype == np.float32 and len(y) == 10785
    assert abs(float(first["train"][0].mean())) < 1e-3 and abs(float(first["train"][0].std()) - 1) < 1e-3
    n = len(digits_hard.split_originals()["test"])  # variant-major: variant v of original i is image v * n + i
    assert np.array_equal(y[:n], y[n:2 * n]) and not np.allclose(x[:n], x[n:2 * n])


def test_registry_splits_and_defaults():
    spec = get_dataset_spec("digits_hard")
    assert spec.num_classes == 10 and spec.input_size == (1, 8, 8) and spec.default_arch == "digits_resnet"
    sizes = {split: len(load_dataset("digits_hard", split)) for split in ("train", "calib", "test")}
    assert sizes == {"train": 8620, "calib": 2592, "test": 10785}  # calib: its own originals, not carved from train
    x, y = load_dataset("digits_hard", "test")[0]
    assert tuple(x.shape) == (1, 8, 8) and 0 <= int(y) < 10
