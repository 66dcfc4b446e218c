"""The images `vitkit check` looks at, listed from the sources `vitkit train` reads: an image folder (class
sub-folders, optionally split into train/val/test), a folder with a label table, a built-in dataset or a
Hugging Face dataset. Nothing is ever written to the data."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.builtin import BUILTIN, load_builtin
from ..data.folder import scan_folder
from ..data.hf import is_hf_source, load_hf
from ..data.preprocess import Preprocessing
from ..data.splits import Dataset
from ..errors import MissingFile, VitkitError


@dataclass
class Entry:
    split: str
    label: Any  # class index, or (multi-label) a tuple of label indices
    path: Path | None = None  # the image file; None for images held in a dataset (built-in, Hugging Face)
    index: int = 0  # its position in its split


@dataclass
class Source:
    name: str
    root: Path | None  # the folder the files are under; None without files
    entries: list[Entry]
    class_names: list[str]
    multi_label: bool
    splits_given: bool  # the data names its splits (folders, a split column), rather than val being held out
    bad_rows: list[str] = field(default_factory=list)
    dataset: Dataset | None = None  # the decoded data, when there are no files

    def display(self, entry: Entry) -> str:
        """How findings and the exclude list name an image: its path under the data folder."""
        if entry.path is None:
            return f"{entry.split}#{entry.index}"
        try:
            return entry.path.relative_to(self.root).as_posix()
        except ValueError:
            return str(entry.path)

    def pixels(self, entry: Entry) -> np.ndarray:
        """(H, W, 3) uint8 of an image held in the dataset."""
        split = getattr(self.dataset, entry.split)
        image = split.images[entry.index] if split.in_memory else split.read_many([entry.index])[0]
        array = image.permute(1, 2, 0).numpy()
        return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array

    def label_names(self, entry: Entry) -> str:
        if self.multi_label:
            return ", ".join(self.class_names[i] for i in entry.label)
        return self.class_names[entry.label]


def open_source(
    data: str,
    labels: str | None = None,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    label_separator: str | None = None,
    multi_label: bool | None = None,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    image_size: int = 32,
) -> Source:
    if labels:
        from ..data.table import list_table

        listing = list_table(
            data,
            labels,
            image_column=image_column,
            label_column=label_column,
            label_separator=label_separator,
            multi_label=multi_label,
            skip_bad=True,
        )
        entries = []
        for split, items in listing.listed.items():
            for index, (path, target) in enumerate(items):
                label = tuple(i for i, v in enumerate(target) if v) if listing.multi_label else target
                entries.append(Entry(split, label, path, index))
        splits_given = len(listing.listed) > 1
        return Source(
            Path(data).resolve().name,
            Path(data),
            entries,
            listing.class_names,
            listing.multi_label,
            splits_given,
            listing.bad,
        )
    if data in BUILTIN or is_hf_source(data):
        if data in BUILTIN:
            dataset = load_builtin(data, data_dir, seed)
        else:
            preprocessing = Preprocessing(image_size=image_size)
            dataset = load_hf(
                data, preprocessing, data_dir=data_dir, image_column=image_column, label_column=label_column
            )
        entries = []
        for split in ("train", "val", "test"):
            part = getattr(dataset, split)
            if part is None:
                continue
            for index, label in enumerate(part.labels.tolist()):
                label = tuple(i for i, v in enumerate(label) if v) if dataset.multi_label else label
                entries.append(Entry(split, label, None, index))
        splits_given = dataset.val is not None or dataset.test is not None
        return Source(data, None, entries, dataset.class_names, dataset.multi_label, splits_given, dataset=dataset)
    root = Path(data)
    if not root.exists():
        raise MissingFile(f"{data}: no such folder, built-in dataset ({', '.join(BUILTIN)}) or hf:NAME")
    if root.is_file():
        raise VitkitError(f"{data} is a file: give the folder of images (with --labels TABLE for a label table)")
    splits = scan_folder(root)
    class_names = sorted(splits["train"])
    index = {c: i for i, c in enumerate(class_names)}
    entries = [
        Entry(split, index[c], path, n)
        for split, classes in splits.items()
        for c, files in classes.items()
        for n, path in enumerate(files)
    ]
    return Source(root.resolve().name, root, entries, class_names, False, len(splits) > 1)
