"""Shared fixtures: small real data and models, no downloads."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """runs/train-1: digits, 3 epochs at 8 bit, batch 128, made once for the whole test run and shared (read
    it; tests that write into it use their own file names or --force)."""
    from proqha.train import TrainConfig, train_run

    root = tmp_path_factory.mktemp("runs")
    train_run(TrainConfig(epochs=3, batch_size=128).resolved(), root / "train-1")
    return root / "train-1"


@pytest.fixture(scope="session")
def search_run(digits_run):
    """runs/search-1 (2 steps) from ``digits_run``, beside it, made once for the whole run."""
    from proqha.search import SearchConfig, run_search

    root = digits_run.parent
    run_search(SearchConfig(source=str(root / "train-1"), steps=2, candidates=4, finetune_epochs=1,
                            final_epochs=0).resolved(),
               root / "search-1")
    return root / "search-1"


TRAINING_FIXTURES = {"digits_run", "search_run", "digits_model", "trained", "runs", "vnni_run", "own_model"}  # each trains a model first


def pytest_collection_modifyitems(config, items):
    """Tests that train a model or run the torchvision zoo carry ``@pytest.mark.slow`` (so `pytest -m "not slow"`
    skips them); a test that uses a training fixture without it stops the run, naming it."""
    unmarked = [item.nodeid for item in items
                if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("slow")]
    if unmarked:
        raise pytest.UsageError(f"mark these tests @pytest.mark.slow (they train a model first): {', '.join(unmarked)}")
