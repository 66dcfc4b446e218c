"""Image folders: `DIR/<class>/*` or `DIR/{train,val,test}/<class>/*`.

Small and medium folders are decoded once into a uint8 tensor, cached on disk (safetensors, keyed by
every file's path, size and modification time, so any change invalidates it). Folders too large for
memory become `FileSplit`s that stream through DataLoader workers; with --skip-bad-images their files
are decoded once first, to leave the bad ones out, and which were bad is cached under the same key.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ..errors import MissingFile, VitkitError
from ..fileio import atomic_path
from ..runtime import available_cores
from .builtin import data_root
from .images import SKIP_BAD_HINT, BadImageError, is_image_file
from .preprocess import Preprocessing
from .splits import Dataset, FileSplit, Split

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
MEMORY_LIMIT_ENV = "VITKIT_MEMORY_LIMIT_GB"
DEFAULT_MEMORY_LIMIT_GB = 4.0


def memory_limit_bytes(limit_gb: float | None = None) -> int:
    """The in-memory budget for decoded folders: the given GiB, else $VITKIT_MEMORY_LIMIT_GB, else 4."""
    if limit_gb is None:
        text = os.environ.get(MEMORY_LIMIT_ENV)
        try:
            limit_gb = float(text) if text else DEFAULT_MEMORY_LIMIT_GB
        except ValueError:
            raise VitkitError(f"{MEMORY_LIMIT_ENV}={text!r}: expected a number of GiB, e.g. 4 or 0.5") from None
    if limit_gb < 0:
        raise VitkitError(f"the in-memory limit must not be negative, got {limit_gb} GiB")
    return int(limit_gb * (1 << 30))


def _class_files(folder: Path) -> dict[str, list[Path]]:
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise VitkitError(f"{folder} has no class sub-folders: expected {folder}/<class>/<image files>")
    files = {}
    for d in classes:
        images = sorted(p for p in d.rglob("*") if p.is_file() and is_image_file(p))
        if not images:
            raise VitkitError(f"class folder {d} has no images (.jpg, .png, .webp, .bmp, ...): add images or remove it")
        files[d.name] = images
    return files


def scan_folder(root: str | os.PathLike) -> dict[str, dict[str, list[Path]]]:
    """{split: {class: [files]}}; a folder without split sub-folders is all 'train'."""
    root = Path(root)
    if not root.exists():
        raise MissingFile(f"data folder {root} does not exist")
    if not root.is_dir():
        raise VitkitError(f"--data {root} is not a folder or a built-in dataset name")
    subdirs = {d.name.lower(): d for d in root.iterdir() if d.is_dir()}
    if "train" in subdirs or "training" in subdirs:
        splits = {SPLIT_ALIASES[name]: _class_files(d) for name, d in subdirs.items() if name in SPLIT_ALIASES}
        train_classes = sorted(splits["train"])
        for split, files in splits.items():
            if sorted(files) != train_classes:
                missing = sorted(set(train_classes) - set(files))
                extra = sorted(set(files) - set(train_classes))
                raise VitkitError(
                    f"classes differ between {root}/train and the {split} split (missing: {missing}, "
                    f"extra: {extra}): every split needs the same class folders"
                )
        return splits
    return {"train": _class_files(root)}


def _fingerprint(
    splits: dict[str, dict[str, list[Path]]], preprocessing: Preprocessing, skip_bad: bool, extra: str = ""
) -> str:
    """Files, sizes, times, the decode (see Preprocessing.decode_key) and the bad-file policy: a cache
    made while skipping bad files must not serve a run that asked to fail on them. `extra` is whatever
    else decides the cached labels (a label table's content)."""
    digest = hashlib.sha256(f"v2 {preprocessing.decode_key()} skip_bad={skip_bad}{extra}".encode())
    for split, classes in sorted(splits.items()):
        for cls, files in classes.items():
            for f in files:
                st = f.stat()
                digest.update(f"{split}|{cls}|{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _read_all(paths: list[Path], read, skip_bad: bool, bad: list[str]) -> list:
    """`read(path)` for every file, on threads (Pillow releases the GIL while decoding). A bad file stops
    the run, or with `skip_bad` reads as None and its error joins `bad`, in the order the files are listed."""

    def attempt(path):
        try:
            return read(path)
        except BadImageError as e:
            if not skip_bad:
                raise BadImageError(f"{e}. {SKIP_BAD_HINT}", e.kind) from None
            return e

    with ThreadPoolExecutor(max_workers=min(8, available_cores() * 2)) as pool:
        results = list(pool.map(attempt, paths))
    bad.extend(str(r) for r in results if isinstance(r, BadImageError))
    return [None if isinstance(r, BadImageError) else r for r in results]


def _decode_all(
    paths: list[Path], preprocessing: Preprocessing, skip_bad: bool, bad: list[str]
) -> tuple[np.ndarray, list[int]]:
    arrays = _read_all(paths, preprocessing.load_array, skip_bad, bad)
    kept = [i for i, a in enumerate(arrays) if a is not None]
    size = preprocessing.square_size
    stacked = np.stack([arrays[i] for i in kept]) if kept else np.zeros((0, size, size, 3), np.uint8)
    return stacked, kept


def _find_unreadable(
    listed: dict[str, list[tuple[Path, int]]], preprocessing: Preprocessing, record: Path | None
) -> tuple[dict[str, list[int]], list[str]]:
    """For a folder that streams with --skip-bad-images: every file decoded once, as the loader workers
    will decode it, so bad ones are left out before the split is built rather than met mid-epoch. Returns
    each split's unreadable indices and their errors; `record` (keyed by the folder's fingerprint) keeps
    the answer for the next run over the same files."""
    if record is not None and record.is_file():
        try:
            saved = json.loads(record.read_text())
            unreadable = {s: [int(i) for i in saved["unreadable"][s]] for s in listed}
            if all(0 <= i < len(listed[s]) for s, ix in unreadable.items() for i in ix):
                return unreadable, [str(e) for e in saved["skipped"]]
        except Exception:  # a damaged record is rebuilt, never trusted
            pass

    def decodes(path: Path) -> bool:
        preprocessing.load_array(path)
        return True

    bad: list[str] = []
    unreadable = {}
    for split, items in listed.items():
        readable = _read_all([p for p, _ in items], decodes, True, bad)
        unreadable[split] = [i for i, ok in enumerate(readable) if not ok]
    if record is not None:
        with atomic_path(record) as tmp:
            tmp.write_text(json.dumps({"unreadable": unreadable, "skipped": bad}))
    return unreadable, bad


def load_folder(
    root: str | os.PathLike,
    preprocessing: Preprocessing,
    *,
    skip_bad: bool = False,
    cache: bool = True,
    data_dir: str | os.PathLike | None = None,
    memory_limit_gb: float | None = None,
    exclude: set[Path] | None = None,
) -> tuple[Dataset, list[str]]:
    """Decode an image folder with `preprocessing` (to its square size), or keep it as files to stream
    when the decoded images would exceed `memory_limit_gb` (see `memory_limit_bytes`). Bad files stop
    with their name, or with `skip_bad` are left out (a streamed folder's are found by a decoding pass
    first); files in `exclude` (resolved paths) are never read. Returns the dataset (val/test may be None)
    and the skipped bad images' errors."""
    splits = scan_folder(root)
    if exclude:
        splits = {
            s: {c: [p for p in files if p.resolve() not in exclude] for c, files in classes.items()}
            for s, classes in splits.items()
        }
    class_names = sorted(splits["train"])
    index = {c: i for i, c in enumerate(class_names)}
    listed = {s: [(p, index[c]) for c, files in classes.items() for p in files] for s, classes in splits.items()}
    fingerprint = _fingerprint(splits, preprocessing, skip_bad)
    return load_listed(
        listed,
        class_names,
        Path(root).resolve().name,
        fingerprint,
        preprocessing,
        skip_bad=skip_bad,
        cache=cache,
        data_dir=data_dir,
        memory_limit_gb=memory_limit_gb,
    )


def load_listed(
    listed: dict[str, list[tuple[Path, Any]]],
    class_names: list[str],
    name: str,
    fingerprint: str,
    preprocessing: Preprocessing,
    *,
    skip_bad: bool = False,
    cache: bool = True,
    data_dir: str | os.PathLike | None = None,
    memory_limit_gb: float | None = None,
    multi_label: bool = False,
    for_training: bool = True,
) -> tuple[Dataset, list[str]]:
    """{split: [(image file, label)]} as a dataset, decoded into memory (cached under `fingerprint`,
    which must cover the files and their labels) or streamed, as `load_folder` describes. A label is a
    class index, or with `multi_label` a 0/1 vector over `class_names`. Without `for_training` the train
    split may be empty (data to evaluate on)."""
    size = preprocessing.square_size
    total = sum(len(items) for items in listed.values())
    label_type = torch.float32 if multi_label else torch.long

    def labels_of(items) -> torch.Tensor:
        shape = (len(items), len(class_names)) if multi_label else (len(items),)
        return torch.tensor([y for _, y in items], dtype=label_type).reshape(shape)

    def dataset(parts) -> Dataset:
        if for_training and len(parts["train"]) == 0:
            raise VitkitError(f"no readable training images in {name}")
        return Dataset(name, parts["train"], parts.get("test"), class_names, parts.get("val"), multi_label)

    def cache_path(suffix: str) -> Path:
        return data_root(data_dir) / "folders" / f"{name}-{fingerprint}{suffix}"

    if total * size * size * 3 > memory_limit_bytes(memory_limit_gb):
        bad = []
        if skip_bad:
            unreadable, bad = _find_unreadable(listed, preprocessing, cache_path(".readable.json") if cache else None)
            listed = {s: [x for i, x in enumerate(items) if i not in unreadable[s]] for s, items in listed.items()}
        parts = {s: FileSplit([p for p, _ in items], labels_of(items), preprocessing) for s, items in listed.items()}
        return dataset(parts), bad

    cache_file = cache_path(".safetensors")
    if cache and cache_file.is_file():
        try:
            tensors = load_file(str(cache_file))
            record = json.loads(cache_file.with_suffix(".json").read_text())
            bad, paths = record["skipped"], record["paths"]
            parts = {
                s: Split(tensors[f"{s}.images"], tensors[f"{s}.labels"], list(map(Path, paths[s]))) for s in listed
            }
            return dataset(parts), bad
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass

    bad: list[str] = []
    parts = {}
    for split, items in listed.items():
        arrays, kept = _decode_all([p for p, _ in items], preprocessing, skip_bad, bad)
        labels = labels_of([items[i] for i in kept])
        paths = [items[i][0] for i in kept]
        parts[split] = Split(torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous(), labels, paths)
    result = dataset(parts)
    if cache:
        tensors = {f"{s}.{k}": getattr(p, k) for s, p in parts.items() for k in ("images", "labels")}
        with atomic_path(cache_file) as tmp:
            save_file(tensors, str(tmp))
        with atomic_path(cache_file.with_suffix(".json")) as tmp:
            paths = {s: [str(path) for path in part.paths] for s, part in parts.items()}
            tmp.write_text(json.dumps({"name": name, "skipped": bad, "paths": paths}))
    return result, bad


def typical_image_side(root: str | os.PathLike, sample: int = 32) -> int | None:
    """The median shorter side of up to `sample` of a folder's training images, evenly spaced through
    it (image headers only, no decoding); None when it cannot be told."""
    try:
        files = [p for classes in scan_folder(root)["train"].values() for p in classes]
    except (OSError, ValueError):
        return None
    picked = files[:: max(1, len(files) // sample)][:sample]
    sides = []
    for path in picked:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except Exception:  # unreadable files are reported by the decoding that follows
            continue
    return sorted(sides)[len(sides) // 2] if sides else None
