"""A small multi-label dataset for the distributed multi-label test: real JPEGs whose red, green and blue
channels are brighter, mostly, where the image has that label, listed in a table of 0/1 columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

LABELS = ("red", "green", "blue")


def colour_labels(folder: Path, images: int = 160, size: int = 12, seed: int = 0) -> tuple[Path, Path]:
    """(image folder, label table) of `images` images, each with a non-empty set of LABELS."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = ["image," + ",".join(LABELS)]
    for i in range(images):
        present = rng.random(len(LABELS)) < 0.5
        present[rng.integers(len(LABELS))] = True
        # overlapping brightness ranges: some images are ambiguous, so the mAP is not a perfect 1
        level = np.where(present, rng.uniform(95, 175, len(LABELS)), rng.uniform(55, 135, len(LABELS)))
        pixels = level + rng.normal(0, 30, (size, size, len(LABELS)))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / "images" / f"c{i:03d}.jpg")
        rows.append(f"c{i:03d}," + ",".join(str(int(p)) for p in present))
    table = folder / "labels.csv"
    table.write_text("\n".join(rows) + "\n")
    return folder, table
