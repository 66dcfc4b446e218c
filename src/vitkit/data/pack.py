"""`vitkit data pack FOLDER OUT`: an image folder as parquet shards in the Hugging Face hub layout
(`OUT/data/<split>-00000-of-00012.parquet`, column `image` = {bytes, path}, column `label` = a
ClassLabel), so that millions of small files become a few hundred that stream well.

A JPEG or PNG already no larger than `--size` keeps its bytes untouched (so the packed copy decodes
to exactly the folder's images); any other image is resized (shorter side to `size`, aspect kept, the
training decode crops) and stored as JPEG.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from PIL import Image

from ..errors import VitkitError
from ..options import option
from ..runtime import available_cores
from .folder import scan_folder
from .hf import require_datasets
from .images import SKIP_BAD_HINT, BadImageError, open_image

KEPT_FORMATS = {"JPEG", "PNG"}
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}  # the hub's split names


_pack = partial(option, group="pack", commands=("data pack",))


@dataclass
class PackOptions:
    """The options of `vitkit data pack`, declared once for it and for `pack_folder`'s defaults."""

    size: int | None = _pack(None, "shrink larger images to this shorter side (default: keep every image)", at_least=1)
    quality: int = _pack(95, "JPEG quality of resized images, 1-100", at_least=1, at_most=100)
    shard_mb: float = _pack(256.0, "image bytes per shard", above=0)
    skip_bad_images: bool = _pack(False, "skip unreadable images instead of failing")


@dataclass
class PackReport:
    images: int
    shards: int
    bytes: int
    skipped: list[str]


def encode(path: Path, size: int | None, quality: int) -> bytes:
    """The file's own bytes when they can be kept, else a resized JPEG."""
    with Image.open(path) as probe:
        kept = probe.format in KEPT_FORMATS and (size is None or min(probe.size) <= size)
    if kept:
        open_image(path)  # refuse corrupt files and decompression bombs now, not mid-training
        return path.read_bytes()
    img = open_image(path)
    if size is not None and min(img.size) > size:
        scale = size / min(img.size)
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC
        )
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def pack_folder(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: int | None = PackOptions.size,
    quality: int = PackOptions.quality,
    shard_mb: float = PackOptions.shard_mb,
    skip_bad: bool = PackOptions.skip_bad_images,
) -> PackReport:
    if size is not None and size < 1:
        raise VitkitError(f"--size {size}: the shorter side must be at least 1 pixel")
    if not 1 <= quality <= 100:
        raise VitkitError(f"--quality {quality}: JPEG quality runs from 1 to 100")
    if not shard_mb > 0:
        raise VitkitError(f"--shard-mb {shard_mb}: shards need a positive size")
    datasets = require_datasets(str(out))
    datasets.disable_progress_bars()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise VitkitError(f"{out} exists and is not empty: pack into a new folder")
    splits = scan_folder(folder)
    classes = sorted(splits["train"])
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    skipped: list[str] = []

    def read(item):
        path, label = item
        try:
            return {"bytes": encode(path, size, quality), "path": path.name}, label
        except (BadImageError, OSError) as e:
            if not skip_bad:
                raise VitkitError(f"{e}. {SKIP_BAD_HINT}") from None
            skipped.append(str(e))
            return None

    total_images = total_bytes = shard_count = 0
    (out / "data").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=min(8, available_cores() * 2)) as pool:
        for split, files in splits.items():
            items = [(p, i) for i, c in enumerate(classes) for p in files[c]]
            shards, rows, row_bytes = [], [], 0

            def flush():
                nonlocal rows, row_bytes
                if rows:
                    part = out / "data" / f".{split}-{len(shards):05d}.parquet"
                    table = {"image": [r[0] for r in rows], "label": [r[1] for r in rows]}
                    datasets.Dataset.from_dict(table, features=features).to_parquet(str(part))
                    shards.append(part)
                    rows, row_bytes = [], 0

            for row in pool.map(read, items):
                if row is None:
                    continue
                rows.append(row)
                row_bytes += len(row[0]["bytes"])
                total_bytes += len(row[0]["bytes"])
                if row_bytes >= shard_mb * (1 << 20):
                    flush()
            flush()
            for i, part in enumerate(shards):
                part.rename(out / "data" / f"{SPLIT_NAMES[split]}-{i:05d}-of-{len(shards):05d}.parquet")
            total_images += len(items)
            shard_count += len(shards)
    return PackReport(total_images - len(skipped), shard_count, total_bytes, skipped)
