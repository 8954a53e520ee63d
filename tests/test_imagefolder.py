"""Users' own image folders (``--dataset imagefolder``): classes from the folder names, sizes, the seeded
val_split hold-out, one-line errors for malformed folders, and a train and export through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from proqha.cli.app import app
from proqha.data import DataSource, get_dataset_spec, load_dataset
from proqha.data.vision import _cached_layout
from proqha.errors import OptionError, ProqhaError
from proqha.train_config import TrainConfig

runner = CliRunner()
CLASSES = ("cat", "dog", "eel")
PER_CLASS = 8


def make_folder(root: Path, splits: tuple[str, ...] = ("train",), per_class: int = PER_CLASS) -> Path:
    """``root/<split>/<class>/`` with ``per_class`` 20x24 images each: PNG and JPEG, some grayscale, one RGBA
    and one palette image."""
    rng = np.random.default_rng(0)
    for split in splits:
        for c in CLASSES:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8))
                if i % 3 == 0:
                    img = img.convert("L")
                elif c == "dog" and i == 1:
                    img = img.convert("RGBA")
                elif c == "eel" and i == 2:
                    img = img.convert("P")
                img.save(folder / f"{i}.{'jpg' if img.mode in ('L', 'RGB') and i % 2 else 'png'}")
    return root


def _files(ds) -> set[str]:
    """The files behind a split (an ImageFiles, or a Subset of one)."""
    base = getattr(ds, "dataset", ds)
    indices = getattr(ds, "indices", range(len(base)))
    return {base.samples[i][0] for i in indices}


def test_classes_sizes_and_channels(tmp_path):
    root = make_folder(tmp_path, ("train", "val"))
    source = DataSource("imagefolder", str(root), image_size=16)
    spec = source.spec()
    assert spec.class_names == CLASSES and spec.num_classes == 3 and spec.input_size == (3, 16, 16)
    assert source.to_dict() == {"dataset": "imagefolder", "data_dir": str(root), "download": False, "image_size": 16,
                                "val_split": None, "class_names": list(CLASSES)}
    for split in ("train", "calib", "test"):
        ds = source.load(split)
        x, y = ds[0]
        assert tuple(x.shape) == (3, 16, 16) and 0 <= y < 3
    test = source.load("test")
    assert len(test) == 3 * PER_CLASS and sorted({test[i][1] for i in range(len(test))}) == [0, 1, 2]
    assert all(tuple(test[i][0].shape) == (3, 16, 16) for i in range(len(test)))  # L, RGBA, P: all RGB
    assert get_dataset_spec("imagefolder", root).input_size == (3, 224, 224)  # the default size


def test_val_split_is_a_fixed_hold_out_of_train(tmp_path):
    root = make_folder(tmp_path)
    source = DataSource("imagefolder", str(root), image_size=16, val_split=0.25)
    train, calib, test = (_files(source.load(s)) for s in ("train", "calib", "test"))
    everything = {str(p) for p in (root / "train").rglob("*") if p.is_file()}
    assert len(test) == round(0.25 * len(everything)) == 6
    assert not (train & test or train & calib or calib & test) and train | calib | test == everything
    _cached_layout.cache_clear()  # a fresh read of the folder (as another process makes) holds out the same files
    assert _files(DataSource("imagefolder", str(root), val_split=0.25).load("test")) == test
    assert _files(source.load("calib")) == calib
    assert tuple(source.load("test")[0][0].shape) == (3, 16, 16)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_an_empty_class_folder_is_one_error_naming_it(tmp_path):
    root = make_folder(tmp_path, ("train", "val"))
    (root / "train" / "fox").mkdir()
    with pytest.raises(ProqhaError) as exc:
        DataSource("imagefolder", str(root)).spec()
    assert str(root / "train" / "fox") in _one_line(exc) and "no images" in str(exc.value)


@pytest.mark.parametrize("name, content", [("notes.txt", b"my notes\n"), ("broken.jpg", b"\xff\xd8 not a jpeg")])
def test_a_file_that_is_no_image_is_one_error_naming_it(name, content, tmp_path):
    root = make_folder(tmp_path, ("train", "val"))
    (root / "val" / "dog" / name).write_bytes(content)
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"hidden files are skipped")
    with pytest.raises(ProqhaError) as exc:
        load_dataset("imagefolder", "test", root)
    assert str(root / "val" / "dog" / name) in _one_line(exc) and "not an image" in str(exc.value)


def test_val_folder_rules(tmp_path):
    both = make_folder(tmp_path / "both", ("train", "val"))
    with pytest.raises(OptionError) as exc:
        DataSource("imagefolder", str(both), val_split=0.2).spec()
    assert exc.value.option == "val_split" and "val" in _one_line(exc)
    only_train = make_folder(tmp_path / "train-only")
    with pytest.raises(OptionError) as exc:
        DataSource("imagefolder", str(only_train)).load("train")
    assert "val/" in _one_line(exc) and "val_split" in str(exc.value)
    other = make_folder(tmp_path / "other", ("train", "val"))
    (other / "val" / "eel").rename(other / "val" / "emu")
    with pytest.raises(ProqhaError) as exc:
        DataSource("imagefolder", str(other)).spec()
    assert "differ from train/" in _one_line(exc) and "emu" in str(exc.value)


@pytest.mark.parametrize("option, value", [("image_size", 16), ("val_split", 0.2)])
def test_imagefolder_options_on_another_dataset_are_refused(option, value):
    with pytest.raises(OptionError) as exc:
        TrainConfig(**{option: value}).resolved()
    assert exc.value.option == option and "applies to imagefolder only" in _one_line(exc)
    with pytest.raises(OptionError, match="applies to imagefolder only"):
        load_dataset("digits", "train", **{option: value})


def test_old_checkpoint_data_reads_as_a_source():
    assert DataSource.from_dict({"dataset": "cifar10", "data_dir": "d", "download": True}) == \
        DataSource("cifar10", "d", True)
    assert DataSource.from_dict({}) == DataSource()
    assert DataSource().to_dict() == {"dataset": "digits", "data_dir": None, "download": False, "image_size": None,
                                      "val_split": None}


def test_a_head_smaller_than_the_classes_is_refused(tmp_path):
    root = make_folder(tmp_path, ("train", "val"))
    with pytest.raises(OptionError) as exc:
        TrainConfig(dataset="imagefolder", data_dir=str(root), num_classes=2).resolved()
    assert exc.value.option == "num_classes" and "3 classes" in _one_line(exc)


def test_a_malformed_folder_through_the_cli_is_exit_2_and_writes_nothing(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data", ("train", "val"))
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = runner.invoke(app, ["train", "--arch", "resnet18", "--dataset", "imagefolder", "--data-dir", str(root),
                                 "--image-size", "16", "--epochs", "1"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "notes.txt" in lines[0], result.stderr
    assert list(work.iterdir()) == []


@pytest.mark.slow
def test_train_and_export_an_image_folder_through_the_cli(tmp_path, monkeypatch):
    import onnx

    root = make_folder(tmp_path / "data", per_class=9)  # 27 files: 7 test, 2 calib, 18 train (no batch of 1)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = runner.invoke(app, ["train", "--arch", "resnet18", "--dataset", "imagefolder", "--data-dir", str(root),
                                 "--image-size", "16", "--val-split", "0.25", "--epochs", "1", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    run = work / "runs" / "train-1"
    config = json.loads((run / "config.json").read_text())
    assert config["class_names"] == list(CLASSES) and config["num_classes"] == 3
    from proqha.recipe import load_model

    model, state = load_model(run / "checkpoints" / "last.pt")
    assert state.data["class_names"] == list(CLASSES) and state.data["image_size"] == 16
    assert state.data["val_split"] == 0.25 and state.input_size == (3, 16, 16)
    assert model.eval()(DataSource.from_dict(state.data).load("test")[0][0][None]).shape == (1, 3)

    out = work / "model.onnx"
    result = runner.invoke(app, ["export", str(run), "--out", str(out), "--samples", "2"])
    assert result.exit_code == 0, result.output
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == list(CLASSES)
    dims = [d.dim_value or d.dim_param for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert dims[-1] == 3


def test_export_model_names_the_outputs(tmp_path):
    import onnx

    from proqha.export.stage import export_model
    from proqha.recipe import ModelRecipe, build_model

    model = build_model(ModelRecipe("digits_resnet", 3, 1, (1, 8, 8)))
    model(__import__("torch").randn(4, 1, 8, 8))  # set the quantizers' ranges
    result = export_model(model.eval(), tmp_path / "m.onnx", (1, 8, 8), check=False, class_names=list(CLASSES))
    meta = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert json.loads(meta["class_names"]) == list(CLASSES) and json.loads(result.metadata["class_names"]) == list(CLASSES)
    with pytest.raises(OptionError, match="class_names must be a list of strings"):
        export_model(model, tmp_path / "n.onnx", (1, 8, 8), check=False, class_names="cat")
