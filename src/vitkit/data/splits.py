"""What a split is, wherever its images live.

Every split (decoded in memory, or streamed: image files, or rows of a Hugging Face table, see
`data.hf.TableSplit`) offers the same protocol, so the training and evaluation code never asks which
kind it holds:
  len(split)          number of images
  split.labels        (N,) int64 class indices
  split.subset(idx)   the same kind of split over the given indices
  split.channels      channels of the stored images (1 or 3)
  split.stored_size   side of the stored square images (before the device resize)
  split.in_memory     whether the images are decoded tensors (`split.images`), else read per batch
  split.read_many(ix) (streamed splits) images ix as (C, stored_size, stored_size) uint8 tensors
Reading batches is `data.loader.BatchLoader`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import VitkitError
from .images import SKIP_BAD_HINT, BadImageError
from .preprocess import Preprocessing


@dataclass
class Split:
    """Images decoded in memory."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    paths: list[Path] | None = None  # the files the images were decoded from (folders), for reports

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "Split":
        index = torch.as_tensor(index, dtype=torch.long)
        paths = None if self.paths is None else [self.paths[i] for i in index.tolist()]
        return Split(self.images[index], self.labels[index], paths)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def stored_size(self) -> int:
        return self.images.shape[-1]

    in_memory = True


@dataclass
class FileSplit:
    """A split kept as file paths, decoded on the fly (for folders that do not fit in memory)."""

    paths: list[Path]
    labels: torch.Tensor
    preprocessing: Preprocessing

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "FileSplit":
        index = torch.as_tensor(index, dtype=torch.long)
        return FileSplit([self.paths[i] for i in index.tolist()], self.labels[index], self.preprocessing)

    def read_many(self, index: list[int]) -> list[torch.Tensor]:
        try:
            return [self.preprocessing.load_tensor(self.paths[i]) for i in index]
        except BadImageError as e:
            raise BadImageError(f"{e}. {SKIP_BAD_HINT}", e.kind) from None

    @property
    def channels(self) -> int:
        return 3  # files are always decoded to RGB

    @property
    def stored_size(self) -> int:
        return self.preprocessing.square_size

    in_memory = False


@dataclass
class Dataset:
    """Train, optional validation and test splits with class names. Multi-label data (`multi_label`)
    has (N, num_classes) 0/1 float labels: any number of classes per image."""

    name: str
    train: Split | FileSplit
    test: Split | FileSplit | None
    class_names: list[str]
    val: Split | FileSplit | None = None
    multi_label: bool = False
    val_held_out: bool = False  # val was held out of train (the data had no validation split)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.train.channels


def join_splits(parts: list) -> "Split | FileSplit":
    """Several splits of one dataset as one, in order (every image of a folder or table, for evaluation)."""
    parts = [p for p in parts if p is not None and len(p)]
    if len(parts) == 1:
        return parts[0]
    labels = torch.cat([p.labels for p in parts])
    if all(isinstance(p, Split) for p in parts):
        paths = None if any(p.paths is None for p in parts) else [path for p in parts for path in p.paths]
        return Split(torch.cat([p.images for p in parts]), labels, paths)
    if all(isinstance(p, FileSplit) for p in parts):
        return FileSplit([path for p in parts for path in p.paths], labels, parts[0].preprocessing)
    raise VitkitError("these splits cannot be scored as one: pass --split train, val or test")


def rarest_label(labels: torch.Tensor) -> torch.Tensor:
    """For (N, K) multi-label 0/1 labels: each image's rarest label (by its count in `labels`), the key a
    multi-label split is stratified on, so that even rare labels reach every part; -1 for none."""
    counts = labels.sum(0)
    rarity = torch.where(labels > 0, counts, float("inf"))
    return torch.where(labels.sum(1) > 0, rarity.argmin(1), -1)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, held_out): `fraction` of every class held out, chosen by a seeded shuffle
    (multi-label: of every image's rarest label, see `rarest_label`)."""
    if not 0.0 < fraction < 1.0:
        raise VitkitError(f"--val-split must be between 0 and 1 (exclusive), got {fraction}")
    if labels.ndim == 2:
        labels = rarest_label(labels)
    gen = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_held = int(round(len(idx) * fraction))
        n_held = min(max(n_held, 1), len(idx) - 1) if len(idx) > 1 else 0
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def limit_split(split: Split | FileSplit, limit: int, seed: int) -> Split | FileSplit:
    """A stratified subset of `limit` images (the whole split when limit is 0 or not smaller)."""
    if not limit or limit >= len(split):
        return split
    _, keep = stratified_split(split.labels, limit / len(split), seed)
    return split.subset(keep)
