"""The DataLoaders training and the search read: their order depends only on a seed, and under torchrun
each rank reads its share."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from proqha import distributed


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, workers: int = 0,
                pin_memory: bool = False, shard: bool = False) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` (workers persist across epochs of one loader).

    ``shard``: under torchrun, each rank reads its share (DistributedSampler seeded by ``seed``) and
    ``batch_size`` stays the global batch (split evenly over ranks). A shuffled (training) loader drops a
    last batch of one sample: BatchNorm cannot train on it.
    """
    if shard and distributed.active():
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed)
        per_rank = max(1, batch_size // distributed.world_size())
        return DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=workers,
                          pin_memory=pin_memory, persistent_workers=workers > 0)
    gen = torch.Generator().manual_seed(seed)
    lone_last = shuffle and len(dataset) % batch_size == 1  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=workers,
                      drop_last=lone_last, pin_memory=pin_memory, persistent_workers=workers > 0)
