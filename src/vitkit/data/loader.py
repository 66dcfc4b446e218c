"""Seeded, resumable, shardable batch iteration over in-memory or streamed splits.

The sample order of epoch e is a permutation drawn from a generator seeded with (seed, e), so a
resumed run replays exactly the batches an uninterrupted one would see, and in distributed training
each rank takes its own slice of every global batch.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from .splits import FileSplit, Split


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 7919 + stream * 104_729) % (2**63 - 1)


class _DecodeFiles(TorchDataset):
    def __init__(self, split: FileSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.split.preprocessing.load_tensor(self.split.paths[i]), self.split.labels[i]


class BatchLoader:
    """Yields (uint8 images, labels) on `device`.

    `batch_size` is per process; one global batch is `batch_size * world_size` samples, and rank r
    takes the r-th slice of it (so N processes see exactly the samples 1 process would).
    """

    def __init__(
        self,
        split: Split | FileSplit,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
    ):
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.device, self.rank, self.world_size, self.workers = torch.device(device), rank, world_size, workers
        global_batch = batch_size * world_size
        n = len(split)
        # the last partial batch is dropped in training only when a full one exists
        self.drop_last = drop_last and n >= global_batch
        self.num_batches = n // global_batch if self.drop_last else -(-n // global_batch)
        self.global_batch = global_batch
        if isinstance(split, Split):
            self.images = split.images.to(self.device)
            self.labels = split.labels.to(self.device)

    def __len__(self) -> int:
        return self.num_batches

    def order(self, epoch: int) -> torch.Tensor:
        n = len(self.split)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch)))

    def _rank_slices(self, epoch: int, start_batch: int) -> list[torch.Tensor]:
        order = self.order(epoch)
        slices = []
        for b in range(start_batch, self.num_batches):
            chunk = order[b * self.global_batch : (b + 1) * self.global_batch]
            if self.world_size > 1 and not self.drop_last:
                slices.append(chunk[self.rank :: self.world_size])  # evaluation: every sample once overall
            else:
                per = len(chunk) // self.world_size
                slices.append(chunk[self.rank * per : (self.rank + 1) * per])
        return slices

    def batches(self, epoch: int = 0, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        slices = self._rank_slices(epoch, start_batch)
        if isinstance(self.split, Split):
            for idx in slices:
                idx = idx.to(self.device)
                yield self.images[idx], self.labels[idx]
            return
        loader = DataLoader(
            _DecodeFiles(self.split),
            batch_sampler=[s.tolist() for s in slices],
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for images, labels in loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
