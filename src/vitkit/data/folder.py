"""Image folders: `DIR/<class>/*` or `DIR/{train,val,test}/<class>/*`.

Small and medium folders are decoded once into a uint8 tensor, cached on disk (safetensors, keyed by
every file's path, size and modification time, so any change invalidates it). Folders too large for
memory become `FileSplit`s that stream through DataLoader workers.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..fileio import atomic_path
from ..runtime import available_cores
from .builtin import data_root
from .images import BadImageError, is_image_file
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
            raise ValueError(f"{MEMORY_LIMIT_ENV}={text!r}: expected a number of GiB, e.g. 4 or 0.5") from None
    if limit_gb < 0:
        raise ValueError(f"the in-memory limit must not be negative, got {limit_gb} GiB")
    return int(limit_gb * (1 << 30))


def _class_files(folder: Path) -> dict[str, list[Path]]:
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{folder} has no class sub-folders: expected {folder}/<class>/<image files>")
    files = {}
    for d in classes:
        images = sorted(p for p in d.rglob("*") if p.is_file() and is_image_file(p))
        if not images:
            raise ValueError(f"class folder {d} has no images (.jpg, .png, .webp, .bmp, ...): add images or remove it")
        files[d.name] = images
    return files


def scan_folder(root: str | os.PathLike) -> dict[str, dict[str, list[Path]]]:
    """{split: {class: [files]}}; a folder without split sub-folders is all 'train'."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"--data {root} is not a folder or a built-in dataset name")
    subdirs = {d.name.lower(): d for d in root.iterdir() if d.is_dir()}
    if "train" in subdirs or "training" in subdirs:
        splits = {SPLIT_ALIASES[name]: _class_files(d) for name, d in subdirs.items() if name in SPLIT_ALIASES}
        train_classes = sorted(splits["train"])
        for split, files in splits.items():
            if sorted(files) != train_classes:
                missing = sorted(set(train_classes) - set(files))
                extra = sorted(set(files) - set(train_classes))
                raise ValueError(
                    f"classes differ between {root}/train and the {split} split (missing: {missing}, "
                    f"extra: {extra}): every split needs the same class folders"
                )
        return splits
    return {"train": _class_files(root)}


def _fingerprint(splits: dict[str, dict[str, list[Path]]], preprocessing: Preprocessing, skip_bad: bool) -> str:
    """Files, sizes, times, the decode (see Preprocessing.decode_key) and the bad-file policy: a cache
    made while skipping bad files must not serve a run that asked to fail on them."""
    digest = hashlib.sha256(f"v2 {preprocessing.decode_key()} skip_bad={skip_bad}".encode())
    for split, classes in sorted(splits.items()):
        for cls, files in classes.items():
            for f in files:
                st = f.stat()
                digest.update(f"{split}|{cls}|{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _decode_all(
    paths: list[Path], preprocessing: Preprocessing, skip_bad: bool, bad: list[str]
) -> tuple[np.ndarray, list[int]]:
    def decode(path):
        try:
            return preprocessing.load_array(path)
        except BadImageError as e:
            if not skip_bad:
                raise BadImageError(f"{e}. Fix or remove the file, or pass --skip-bad-images") from None
            bad.append(str(e))
            return None

    with ThreadPoolExecutor(max_workers=min(8, available_cores() * 2)) as pool:
        arrays = list(pool.map(decode, paths))
    kept = [i for i, a in enumerate(arrays) if a is not None]
    size = preprocessing.square_size
    stacked = np.stack([arrays[i] for i in kept]) if kept else np.zeros((0, size, size, 3), np.uint8)
    return stacked, kept


def load_folder(
    root: str | os.PathLike,
    preprocessing: Preprocessing,
    *,
    skip_bad: bool = False,
    cache: bool = True,
    data_dir: str | os.PathLike | None = None,
    memory_limit_gb: float | None = None,
) -> tuple[Dataset, list[str]]:
    """Decode an image folder with `preprocessing` (to its square size), or keep it as files to stream
    when the decoded images would exceed `memory_limit_gb` (see `memory_limit_bytes`). Returns the
    dataset (val/test may be None) and the list of skipped bad images (empty when streaming: files are
    read per batch)."""
    splits = scan_folder(root)
    class_names = sorted(splits["train"])
    index = {c: i for i, c in enumerate(class_names)}
    total = sum(len(f) for classes in splits.values() for f in classes.values())
    listed = {s: [(p, index[c]) for c, files in classes.items() for p in files] for s, classes in splits.items()}
    name = Path(root).resolve().name
    size = preprocessing.square_size
    if total * size * size * 3 > memory_limit_bytes(memory_limit_gb):
        parts = {
            s: FileSplit([p for p, _ in items], torch.tensor([y for _, y in items]), preprocessing)
            for s, items in listed.items()
        }
        return Dataset(name, parts["train"], parts.get("test"), class_names, parts.get("val")), []

    cache_file = data_root(data_dir) / "folders" / f"{name}-{_fingerprint(splits, preprocessing, skip_bad)}.safetensors"
    if cache and cache_file.is_file():
        try:
            tensors = load_file(str(cache_file))
            bad = json.loads((cache_file.with_suffix(".json")).read_text())["skipped"]
            parts = {s: Split(tensors[f"{s}.images"], tensors[f"{s}.labels"]) for s in splits}
            return Dataset(name, parts["train"], parts.get("test"), class_names, parts.get("val")), bad
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass

    bad: list[str] = []
    parts = {}
    for split, items in listed.items():
        arrays, kept = _decode_all([p for p, _ in items], preprocessing, skip_bad, bad)
        labels = torch.tensor([items[i][1] for i in kept], dtype=torch.long)
        parts[split] = Split(torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous(), labels)
    if len(parts["train"]) == 0:
        raise ValueError(f"no readable training images in {root}")
    if cache:
        tensors = {f"{s}.{k}": getattr(p, k) for s, p in parts.items() for k in ("images", "labels")}
        with atomic_path(cache_file) as tmp:
            save_file(tensors, str(tmp))
        with atomic_path(cache_file.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps({"root": str(Path(root).resolve()), "skipped": bad}))
    return Dataset(name, parts["train"], parts.get("test"), class_names, parts.get("val")), bad
