"""Where a search's batches come from: a dataset's splits (the CLI: every order derives from a seed),
or the caller's own DataLoaders (the Python API: iterated as given, under a seeded global RNG)."""

from __future__ import annotations

import math
from typing import Iterable, Protocol

import torch
from torch.utils.data import Dataset

from proqha import distributed
from proqha.errors import ProqhaError
from proqha.train import make_loader

Batch = tuple[torch.Tensor, torch.Tensor]


class SearchData(Protocol):
    """The batches one search needs: a scoring batch per step, fine-tuning epochs, calibration and test."""

    def scoring_batch(self, seed: int) -> Batch: ...

    def train_batches(self, seed: int) -> Iterable[Batch]: ...

    def train_steps(self) -> int: ...

    def calib_batches(self) -> Iterable[Batch]: ...

    def test_batches(self) -> Iterable[Batch] | None: ...


class DatasetData:
    """Splits of a dataset, loaded with seeded orders (``batch_size`` is global under torchrun)."""

    def __init__(self, train: Dataset, calib: Dataset, test: Dataset, batch_size: int, workers: int = 0) -> None:
        self.train, self.calib, self.test = train, calib, test
        self.batch_size, self.workers = batch_size, workers

    def scoring_batch(self, seed: int) -> Batch:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.train), generator=gen)[: self.batch_size].tolist()
        xs, ys = zip(*(self.train[i] for i in idx))
        return torch.stack(xs), torch.stack(ys) if isinstance(ys[0], torch.Tensor) else torch.as_tensor(ys)  # masks

    def train_batches(self, seed: int) -> Iterable[Batch]:
        return make_loader(self.train, self.batch_size, shuffle=True, seed=seed, workers=self.workers, shard=True)

    def train_steps(self) -> int:
        world = distributed.world_size()
        return math.ceil(len(self.train) / world / max(1, self.batch_size // world))

    def calib_batches(self) -> Iterable[Batch]:
        return make_loader(self.calib, max(self.batch_size, 256), shuffle=False, workers=self.workers)

    def test_batches(self) -> Iterable[Batch]:
        return make_loader(self.test, 256, shuffle=False, workers=self.workers)


class LoaderData:
    """The caller's DataLoaders (or any re-iterable of ``(x, y)`` batches), used as they are. The scoring
    batch is the first batch of ``train`` iterated under ``torch.manual_seed(seed)``, and a fine-tuning
    epoch iterates it under its seed; a DataLoader with its own ``generator`` has it reseeded too, so a
    shuffling DataLoader gives the same batches for the same seed (every entrant of the final race alike)."""

    def __init__(self, train: Iterable[Batch], calib: Iterable[Batch] | None = None,
                 test: Iterable[Batch] | None = None) -> None:
        self.train, self.calib, self.test = train, calib, test

    def _seed_generator(self, seed: int) -> None:
        generator = getattr(self.train, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(seed)

    def scoring_batch(self, seed: int) -> Batch:
        torch.manual_seed(seed)
        self._seed_generator(seed)
        for x, y in self.train:
            return x, torch.as_tensor(y)
        raise ProqhaError("the training data yields no batches")

    def train_batches(self, seed: int) -> Iterable[Batch]:
        self._seed_generator(seed)  # the caller seeds the global RNG
        return self.train

    def train_steps(self) -> int:
        return len(self.train) if hasattr(self.train, "__len__") else 1  # type: ignore[arg-type]

    def calib_batches(self) -> Iterable[Batch]:
        if self.calib is None:
            raise ProqhaError("this search measures losses on calibration data; pass calib_loader")
        return self.calib

    def test_batches(self) -> Iterable[Batch] | None:
        return self.test

