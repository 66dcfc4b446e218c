"""Hugging Face `datasets` sources (the optional `datasets` extra): `hf:NAME[:CONFIG]` from the hub
(through its cache; `HF_DATASETS_OFFLINE=1` keeps it offline), a folder written by `save_to_disk`, or
a folder of parquet shards (`data/train-00000-of-00004.parquet`, `train/*.parquet`, ...).

The tables are memory-mapped Arrow, so a split is random access without being read whole: each
process reads only the rows of its own batches. Splits small enough for the in-memory limit are
decoded once into memory, like folders; larger ones stream through the loader's workers.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import VitkitError
from ..runtime import available_cores
from .builtin import data_root
from .folder import SPLIT_ALIASES, memory_limit_bytes
from .preprocess import Preprocessing
from .splits import Dataset, Split

HUB_PREFIX = "hf:"
LABEL_NAMES = ("label", "labels", "fine_label", "class", "target", "category")
IMAGE_NAMES = ("image", "img", "images", "picture", "photo")


def is_hf_source(data: str) -> bool:
    """`hf:NAME`, a `save_to_disk` folder, or a folder holding parquet files."""
    if data.startswith(HUB_PREFIX):
        return True
    path = Path(data)
    if not path.is_dir():
        return False
    return _saved_to_disk(path) or any(path.rglob("*.parquet"))


def _saved_to_disk(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def require_datasets(data: str):
    try:
        import datasets
    except ImportError:  # a ValueError: the command line reports it as one line
        raise VitkitError(
            f"{data} is a Hugging Face dataset: install the datasets extra (pip install 'vitkit[datasets]')"
        ) from None
    return datasets


def _parquet_files(root: Path) -> dict[str, list[str]]:
    """{split: [shards]} from the hub layout: the split is the shard's name before its first '-' or
    '_' (train-00000-of-00002.parquet), else its folder's name (train/part-0.parquet); all 'train'
    when neither names a split."""
    files: dict[str, list[str]] = {}
    for shard in sorted(root.rglob("*.parquet")):
        stem = shard.stem.replace("_", "-").split("-")[0].lower()
        split = SPLIT_ALIASES.get(stem) or SPLIT_ALIASES.get(shard.parent.name.lower()) or "train"
        files.setdefault(split, []).append(str(shard))
    return files


def _check_parquet_files(data: str, files: dict[str, list[str]]) -> None:
    """Every shard's footer read before any is loaded: a truncated or damaged one is named, instead of a
    dataset-generation traceback from the middle of the conversion."""
    import pyarrow
    import pyarrow.parquet

    for shard in (shard for shards in files.values() for shard in shards):
        try:
            pyarrow.parquet.read_metadata(shard)
        except (pyarrow.ArrowException, OSError) as e:
            raise VitkitError(
                f"--data {data}: {shard} is not a readable parquet file ({str(e).splitlines()[0]}); it is "
                "truncated or damaged: copy it again, or pack the images again with `vitkit data pack`"
            ) from None


def _open(data: str, data_dir) -> dict[str, Any]:
    """{train/val/test: datasets.Dataset}."""
    datasets = require_datasets(data)
    parquet = not data.startswith(HUB_PREFIX) and not _saved_to_disk(Path(data))
    files = _parquet_files(Path(data)) if parquet else {}
    _check_parquet_files(data, files)
    try:
        if data.startswith(HUB_PREFIX):
            name, _, config = data[len(HUB_PREFIX) :].partition(":")
            loaded = datasets.load_dataset(name, config or None)
        elif _saved_to_disk(Path(data)):
            loaded = datasets.load_from_disk(data)
        else:
            cache = data_root(data_dir) / "hf-datasets"
            loaded = datasets.load_dataset("parquet", data_files=files, cache_dir=str(cache))
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        offline = (
            " (offline: HF_DATASETS_OFFLINE is set and it is not in the cache)"
            if data.startswith(HUB_PREFIX) and os.environ.get("HF_DATASETS_OFFLINE")
            else ""
        )
        raise VitkitError(f"--data {data}: cannot load the dataset{offline}: {first}") from None
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    parts = {}
    for split, table in loaded.items():
        alias = SPLIT_ALIASES.get(split.lower())
        if alias and alias not in parts:
            parts[alias] = table
    if "train" not in parts:
        raise VitkitError(f"--data {data} has splits {', '.join(loaded)} but none is a train split")
    return parts


def _pick(features, wanted: str | None, kind: str, is_kind, names: tuple[str, ...], flag: str, data: str) -> str:
    if wanted:
        if wanted not in features:
            raise VitkitError(f"{flag} {wanted}: --data {data} has columns {', '.join(features)}")
        return wanted
    typed = [c for c, f in features.items() if is_kind(f)]
    named = [c for c in names if c in features]
    for candidates in ([c for c in named if c in typed], typed if len(typed) == 1 else [], named):
        if candidates:
            return candidates[0]
    raise VitkitError(f"--data {data}: cannot tell which column holds the {kind} ({', '.join(features)}): pass {flag}")


def _check_labels(data: str, split: str, column: str, labels: torch.Tensor, class_names: list[str]) -> None:
    """ClassLabel values are indices into its names: one outside them (a hand-edited table, or -1, the
    hub's "no label") would fail mid-run, so it is refused here with its row."""
    bad = ((labels < 0) | (labels >= len(class_names))).nonzero().flatten()
    if len(bad):
        row = int(bad[0])
        raise VitkitError(
            f"--data {data}: the {split} split's {column!r} column holds {int(labels[row])} at row {row} "
            f"({len(bad)} row(s) in all), outside its ClassLabel's {len(class_names)} classes (0 to "
            f"{len(class_names) - 1}; -1 means unlabelled): fix the labels or leave those rows out"
        )


def _image_source(cell: dict, i: int) -> tuple[Any, str]:
    """An undecoded image cell ({bytes, path}) as something Pillow opens, and its name for errors."""
    name = cell.get("path") or f"row {i}"
    return (io.BytesIO(cell["bytes"]) if cell.get("bytes") is not None else cell["path"]), name


@dataclass
class TableSplit:
    """Rows of a memory-mapped `datasets` table, decoded one by one (images stored as encoded bytes)."""

    table: Any  # datasets.Dataset with the image column left undecoded
    image_column: str
    labels: torch.Tensor
    preprocessing: Preprocessing

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "TableSplit":
        index = torch.as_tensor(index, dtype=torch.long)
        return TableSplit(self.table.select(index.tolist()), self.image_column, self.labels[index], self.preprocessing)

    def read_many(self, index: list[int]) -> list[torch.Tensor]:
        cells = self.table[list(index)][self.image_column]  # one Arrow take for the whole batch
        sources = [_image_source(cell, i) for cell, i in zip(cells, index)]
        return [self.preprocessing.load_tensor(source, name) for source, name in sources]

    def decode_all(self) -> Split:
        """Every image decoded into memory (threads: Pillow releases the GIL while decoding)."""
        cells = list(self.table[self.image_column])

        def decode(i):
            source, name = _image_source(cells[i], i)
            return self.preprocessing.load_array(source, name)

        with ThreadPoolExecutor(max_workers=min(8, available_cores() * 2)) as pool:
            arrays = list(pool.map(decode, range(len(self))))
        stacked = np.stack(arrays) if arrays else np.zeros((0, self.stored_size, self.stored_size, 3), np.uint8)
        return Split(torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous(), self.labels)

    @property
    def channels(self) -> int:
        return 3  # decoded to RGB, like image files

    @property
    def stored_size(self) -> int:
        return self.preprocessing.square_size

    in_memory = False


def load_hf(
    data: str,
    preprocessing: Preprocessing,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    data_dir: str | os.PathLike | None = None,
    memory_limit_gb: float | None = None,
) -> Dataset:
    """A Hugging Face dataset as train/val/test splits with the class names of its `ClassLabel`
    (else its sorted label values), decoded with `preprocessing`."""
    datasets = require_datasets(data)
    parts = _open(data, data_dir)
    features = parts["train"].features
    image_column = _pick(
        features,
        image_column,
        "images",
        lambda f: isinstance(f, datasets.Image),
        IMAGE_NAMES,
        "--image-column",
        data,
    )
    label_column = _pick(
        features,
        label_column,
        "labels",
        lambda f: isinstance(f, datasets.ClassLabel),
        LABEL_NAMES,
        "--label-column",
        data,
    )
    label_feature = features[label_column]
    if isinstance(label_feature, datasets.ClassLabel):
        class_names = list(label_feature.names)
        to_index = None
    else:
        values = sorted({v for table in parts.values() for v in table[label_column]})
        class_names = [str(v) for v in values]
        to_index = {v: i for i, v in enumerate(values)}
    splits = {}
    for split, table in parts.items():
        if image_column not in table.features or label_column not in table.features:
            raise VitkitError(f"--data {data}: the {split} split lacks the {image_column!r} or {label_column!r} column")
        table = table.select_columns([image_column, label_column])
        if isinstance(table.features[image_column], datasets.Image):
            table = table.cast_column(image_column, datasets.Image(decode=False))
        values = list(table[label_column])
        labels = torch.tensor([to_index[v] for v in values] if to_index else list(values), dtype=torch.long)
        _check_labels(data, split, label_column, labels, class_names)
        splits[split] = TableSplit(table, image_column, labels, preprocessing)
    total = sum(len(s) for s in splits.values())
    size = preprocessing.square_size
    if total * size * size * 3 <= memory_limit_bytes(memory_limit_gb):
        splits = {name: split.decode_all() for name, split in splits.items()}
    name = data[len(HUB_PREFIX) :] if data.startswith(HUB_PREFIX) else Path(data).resolve().name
    return Dataset(name, splits["train"], splits.get("test"), class_names, splits.get("val"))
