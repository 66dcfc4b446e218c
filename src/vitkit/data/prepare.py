"""Data policy: which images a run trains, validates and tests on, and how they are normalised."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..errors import MissingFile, VitkitError
from ..options import option
from .augment import IMAGENET_MEAN, IMAGENET_STD, to_channels
from .builtin import BUILTIN, load_builtin
from .folder import load_folder, typical_image_side
from .hf import is_hf_source, load_hf
from .loader import BatchLoader
from .preprocess import Preprocessing
from .splits import Dataset, FileSplit, Split, limit_split, stratified_split

NORMALIZE = ("fit", "imagenet", "half", "none")
STATS_IMAGES = 20000  # the normalisation statistics' sample: this many training images, evenly spaced

# Sensible from-scratch defaults per built-in dataset (a user's values and presets override them).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": dict(
        image_size=16,
        epochs=40,
        batch_size=64,
        lr=2e-3,
        warmup_epochs=3,
        crop_padding=1,
        label_smoothing=0.1,
        val_split=0.1,
    ),
    "mnist": dict(image_size=28, epochs=10, crop_padding=2),
    "fashion-mnist": dict(image_size=28, epochs=10, crop_padding=2, hflip=True),
    "cifar10": dict(image_size=32, epochs=50, crop_padding=4, hflip=True),
    "cifar100": dict(image_size=32, epochs=100, crop_padding=4, hflip=True),
}
FOLDER_DEFAULTS: dict[str, Any] = dict(image_size=32, epochs=30, hflip=True, rrc_scale=0.35, val_split=0.2)


def dataset_defaults(data: str) -> dict[str, Any]:
    """The training values a dataset suggests when no preset is given."""
    return DATASET_DEFAULTS.get(data, {}) if data in BUILTIN else FOLDER_DEFAULTS


def typical_side(data: str) -> int | None:
    """How large the data's images are (the median shorter side, sampled), before anything is decoded;
    None when unknown (Hugging Face data)."""
    if data in BUILTIN:
        return DATASET_DEFAULTS.get(data, {}).get("image_size")
    if is_hf_source(data):
        return None
    return typical_image_side(data)


_data = partial(option, group="data")
# the data options `vitkit check` takes too (its data is an argument, not --data)
_shared = partial(_data, commands=("train", "lr-find", "check"))


@dataclass
class DataOptions:
    """Which images a run trains, validates and tests on: the options `prepare_data` takes, declared only
    here (the training configuration extends this class; evaluation reads them from a checkpoint)."""

    data: str = _data(
        "digits",
        f"built-in dataset ({', '.join(BUILTIN)}), an image folder, a folder of parquet shards or of "
        "save_to_disk, or hf:NAME[:CONFIG] (a Hugging Face hub dataset)",
        path=True,
    )
    data_dir: str | None = _shared(
        None, "download cache (default: $VITKIT_DATA, else ~/.cache/vitkit)", path=True, other_data=True
    )
    val_split: float = _shared(
        0.1,
        "fraction of train held out for validation when the data has no val split (image folders and their "
        "presets: 0.2)",
        above=0,
        below=1,
    )
    labels: str | None = _shared(
        None,
        "a table (.csv, .tsv, .jsonl, .parquet) of the images under --data (a folder) and their label or labels, "
        "one row per image; a split column (train/val/test) assigns rows to splits",
        path=True,
    )
    image_column: str | None = _shared(
        None,
        "the image column: of Hugging Face data (default: the one Image feature), or of --labels (paths relative "
        "to --data, with or without extension; default: a column named image, path, file, id, ...)",
    )
    label_column: str | None = _shared(
        None,
        "the label column: of Hugging Face data (default: the ClassLabel feature), or of --labels: one column "
        "(a class, a list such as ['a', 'b'], or names joined by --label-separator) or comma-separated 0/1 "
        "columns (default: the table's 0/1 columns, else a column named label(s), tags, genre, ...)",
    )
    label_separator: str | None = _shared(None, "--labels: the separator of several labels in one cell, e.g. '|'")
    multi_label: bool | None = _shared(
        None,
        "any number of labels per image: sigmoid outputs, thresholds per label, mAP (default: when --labels has "
        "rows with several labels, or 0/1 label columns)",
    )
    skip_bad_images: bool = _data(
        False, "skip unreadable images (listed in skipped_images.txt) instead of failing", other_data=True
    )
    exclude: str | None = _data(
        None,
        "a list of images under --data to leave out, never read: a text file with one path a line, or a CSV with a "
        "path column (such as the exclude.csv vitkit check writes); paths relative to --data or absolute",
    )
    train_limit: int = _data(0, "use only this many training images, stratified (0: all)", at_least=0)
    test_limit: int = _data(0, "use only this many test images, stratified (0: all)", at_least=0)
    memory_limit_gb: float | None = _data(
        None,
        "decode a folder into memory up to this many GiB, stream larger ones from disk "
        "(default: $VITKIT_MEMORY_LIMIT_GB, else 4; 0: always stream)",
        at_least=0,
        resumable=True,
        other_data=True,
    )
    seed: int = option(
        0,
        "seed of weights, data order, splits and augmentation",
        group="run",
        commands=("train", "lr-find", "check"),
        card=22,
        other_data=True,
    )


def read_exclude(listing: str | os.PathLike, data: str) -> set[Path]:
    """The resolved paths an --exclude list names: one a line, or a CSV's `path` column (its first column
    when none is named so); relative paths are under the folder `data`."""
    path = Path(listing)
    if not path.is_file():
        raise MissingFile(f"--exclude {path}: no such file")
    rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    rows = [row for row in rows if row and row[0].strip()]
    column = 0
    if rows and "path" in [cell.strip().lower() for cell in rows[0]]:
        column = [cell.strip().lower() for cell in rows[0]].index("path")
        rows = rows[1:]
    root = Path(data)
    return {(root / row[column].strip()).resolve() for row in rows if len(row) > column}


def prepare_data(
    options: DataOptions, preprocessing: Preprocessing, for_training: bool = True
) -> tuple[Dataset, list[str]]:
    """Load a built-in dataset, a Hugging Face dataset (`hf:NAME`, a save_to_disk or parquet folder)
    or an image folder (decoded with `preprocessing`, streamed from disk when larger than
    `memory_limit_gb`; labelled by its class sub-folders, or by the table `labels`: see data/table.py),
    apply the limits and hold a stratified validation split out of train when the
    data has none. Without `for_training` (data to evaluate a model on) the splits are the data's own:
    nothing is held out or limited, and a table may have no train rows. Returns the dataset and the
    skipped bad images."""
    o = options
    data, data_dir, seed, memory_limit_gb = o.data, o.data_dir, o.seed, o.memory_limit_gb
    image_column, label_column, skip_bad = o.image_column, o.label_column, o.skip_bad_images
    exclude = read_exclude(o.exclude, data) if o.exclude else None
    if exclude is not None and (data in BUILTIN or is_hf_source(data)):
        raise VitkitError(
            f"--exclude {o.exclude}: lists image files, so it applies to an image folder --data, not {data}"
        )
    if o.labels:
        from .table import load_table

        dataset, bad = load_table(
            data,
            o.labels,
            preprocessing,
            image_column=image_column,
            label_column=label_column,
            label_separator=o.label_separator,
            multi_label=o.multi_label,
            skip_bad=skip_bad,
            exclude=exclude,
            data_dir=data_dir,
            memory_limit_gb=memory_limit_gb,
            for_training=for_training,
        )
    elif data in BUILTIN:
        dataset, bad = load_builtin(data, data_dir, seed), []
    elif is_hf_source(data):
        columns = dict(image_column=image_column, label_column=label_column)
        dataset = load_hf(data, preprocessing, data_dir=data_dir, memory_limit_gb=memory_limit_gb, **columns)
        bad = []
    else:
        dataset, bad = load_folder(
            data,
            preprocessing,
            skip_bad=skip_bad,
            data_dir=data_dir,
            memory_limit_gb=memory_limit_gb,
            exclude=exclude,
        )
    if not for_training:
        return dataset, bad
    dataset.train = limit_split(dataset.train, o.train_limit, seed)
    if dataset.test is not None:
        dataset.test = limit_split(dataset.test, o.test_limit, seed)
    if dataset.val is None:
        keep, held = stratified_split(dataset.train.labels, o.val_split, seed)
        dataset.train, dataset.val = dataset.train.subset(keep), dataset.train.subset(held)
        dataset.val_held_out = True
    return dataset, bad


def _sample_batches(split: Split | FileSplit, sample: torch.Tensor, workers: int):
    """The sampled images in order, 256 at a time; an in-memory split is indexed in place (a copy of a
    20,000-image sample could take gigabytes)."""
    if split.in_memory:
        for chunk in sample.split(256):
            yield split.images[chunk]
        return
    for images, _ in BatchLoader(split.subset(sample), 256, shuffle=False, workers=workers).batches():
        yield images


def channel_stats(
    split: Split | FileSplit, channels: int, workers: int = 0
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of the training images (the Keras Normalization layer's adapt), summed batch
    by batch in float64 over STATS_IMAGES of them evenly spaced through the split (all when fewer), so a
    folder listed class by class is sampled across all its classes. A streamed split reads the same
    images in the same order (with `workers` decoding processes), so a run normalises identically
    whether its data fits in memory or not."""
    count = min(len(split), STATS_IMAGES)
    sample = torch.arange(count) * len(split) // count
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for images in _sample_batches(split, sample, workers):
        x = to_channels(images.float().div(255), channels).double()
        total += x.sum(dim=(0, 2, 3))
        squares += x.square().sum(dim=(0, 2, 3))
    n = count * split.stored_size**2
    mean = total / n
    std = ((squares - n * mean.square()) / (n - 1)).clamp(min=0).sqrt().clamp(min=1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


def normalization(
    mode: str, train: Split | FileSplit, channels: int, workers: int = 0
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for a `--normalize` mode: fit (train-set statistics), imagenet, half or none."""
    if mode == "fit":
        return channel_stats(train, channels, workers)
    if mode == "imagenet":
        return (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.449,), (0.226,))
    if mode == "half":
        return (0.5,) * channels, (0.5,) * channels
    return (0.0,) * channels, (1.0,) * channels
