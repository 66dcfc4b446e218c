"""Seeded, resumable, shardable batch iteration over in-memory or streamed splits.

The sample order of epoch e is a permutation (or, with sample weights, a draw with replacement)
from a generator seeded with (seed, e), so a resumed run replays exactly the batches an uninterrupted
one would see, and in distributed training each rank takes its own slice of every global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler, default_collate
from torch.utils.data import Dataset as TorchDataset

from ..runtime import available_cores
from .images import BadImageError

AUTO_WORKERS = -1
MAX_AUTO_WORKERS = 8
PREFETCH_BATCHES = 4  # per worker: enough to ride out a slow file without holding much memory


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 7919 + stream * 104_729) % (2**63 - 1)


def auto_workers() -> int:
    """Decoding processes per training process: the cores this process may use, shared among the
    processes on this node (torchrun's LOCAL_WORLD_SIZE), less one core for the training step itself;
    at least one, so decoding never runs in the training process."""
    cores = available_cores()
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(MAX_AUTO_WORKERS, cores // local_processes - 1))


def resolve_workers(workers: int) -> int:
    return auto_workers() if workers == AUTO_WORKERS else workers


@dataclass
class _UnreadableBatch:
    """A batch that met a bad image, carried back from a worker as data: an exception raised there
    would reach the user re-raised with the worker's whole traceback as its message."""

    message: str
    kind: str


def _collate(batch):
    return batch if isinstance(batch, _UnreadableBatch) else default_collate(batch)


class _ReadSplit(TorchDataset):
    def __init__(self, split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.split.read_many([i])[0], self.split.labels[i]

    def __getitems__(self, index: list[int]):
        """A whole batch per call, so a split can read its rows together (one Arrow take for a table)."""
        try:
            images = self.split.read_many(index)
        except BadImageError as e:
            return _UnreadableBatch(str(e), e.kind)
        return list(zip(images, self.split.labels[index]))


class _EpochBatches(Sampler):
    """The batch sampler of a persistent DataLoader: holds this rank's batches of the pass about to
    start, so the worker processes outlive the epoch while the seeded order changes with it."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchLoader:
    """Yields (uint8 images, labels) on `device`.

    `batch_size` is per process; one global batch is `batch_size * world_size` samples, and rank r
    takes the r-th slice of it (so N processes see exactly the samples 1 process would, and each
    reads only its own). In-memory splits are indexed on the device; streamed splits are read by
    `workers` processes (AUTO_WORKERS: `auto_workers()`; 0: in this process) that persist across
    epochs, prefetch, and hand over pinned memory when training on CUDA. With `sample_weights` (one
    per image) an epoch is len(split) images drawn with replacement in proportion to them.
    """

    def __init__(
        self,
        split,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        sample_weights: torch.Tensor | None = None,
    ):
        if sample_weights is not None and (not shuffle or len(sample_weights) != len(split)):
            raise ValueError("sample weights need a shuffled loader and one weight per image")
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.sample_weights = sample_weights
        self.device, self.rank, self.world_size = torch.device(device), rank, world_size
        self.workers = 0 if split.in_memory else resolve_workers(workers)
        global_batch = batch_size * world_size
        n = len(split)
        # the last partial batch is dropped in training only when a full one exists
        self.drop_last = drop_last and n >= global_batch
        self.num_batches = n // global_batch if self.drop_last else -(-n // global_batch)
        self.global_batch = global_batch
        self._stream: DataLoader | None = None
        if split.in_memory:
            self.images = split.images.to(self.device)
            self.labels = split.labels.to(self.device)

    def __len__(self) -> int:
        return self.num_batches

    def order(self, epoch: int) -> torch.Tensor:
        n = len(self.split)
        if not self.shuffle:
            return torch.arange(n)
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        if self.sample_weights is not None:
            return torch.multinomial(self.sample_weights, n, replacement=True, generator=generator)
        return torch.randperm(n, generator=generator)

    def batch_indices(self, epoch: int = 0, start_batch: int = 0) -> list[torch.Tensor]:
        """The split indices of this rank's images in each batch that `batches` yields, in order."""
        return self._rank_slices(epoch, start_batch)

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

    def _streaming_loader(self) -> DataLoader:
        if self._stream is None:
            self._stream = DataLoader(
                _ReadSplit(self.split),
                batch_sampler=_EpochBatches(),
                collate_fn=_collate,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.workers > 0,
                prefetch_factor=PREFETCH_BATCHES if self.workers > 0 else None,
            )
        return self._stream

    def batches(self, epoch: int = 0, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        slices = self._rank_slices(epoch, start_batch)
        if self.split.in_memory:
            for idx in slices:
                idx = idx.to(self.device)
                yield self.images[idx], self.labels[idx]
            return
        loader = self._streaming_loader()
        loader.batch_sampler.batches = [s.tolist() for s in slices]
        for batch in loader:
            if isinstance(batch, _UnreadableBatch):
                raise BadImageError(batch.message, batch.kind)
            images, labels = batch
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
