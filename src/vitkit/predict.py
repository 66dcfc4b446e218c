"""Batched prediction over files, folders and globs with a checkpoint's own preprocessing."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable

import torch
from tqdm.auto import tqdm

from .data.images import BadImageError, is_image_file


def expand_paths(patterns: Iterable[str]) -> list[Path]:
    """Files as given, folders searched recursively for images, globs expanded; missing ones named."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        elif path.is_file():
            found.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise FileNotFoundError(f"{pattern}: no such file, folder or matching glob")
            found += matches
    return found


def top_k(probs: torch.Tensor, class_names: list[str], k: int) -> list[list[dict]]:
    k = min(k, probs.shape[1])
    scores, index = probs.topk(k, dim=1)
    return [
        [{"label": class_names[i], "score": round(float(s), 6)} for s, i in zip(row_s, row_i)]
        for row_s, row_i in zip(scores.tolist(), index.tolist())
    ]


def predict_paths(
    classifier, paths: list[Path], topk: int = 5, batch_size: int = 32, progress: bool = True
) -> list[dict]:
    """[{"path": ..., "predictions": [{"label", "score"}, ...]}] best first; unreadable images get
    an "error" entry instead of stopping the whole batch."""
    results: list[dict] = []
    bar = tqdm(total=len(paths), unit="img", disable=not progress or len(paths) < 2 * batch_size, leave=False)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        tensors, ok = [], []
        for p in chunk:
            try:
                tensors.append(classifier.preprocessing.load_tensor(p))
                ok.append(p)
            except BadImageError as e:
                results.append({"path": str(p), "error": str(e)})
        if tensors:
            probs = classifier.predict_tensor(torch.stack(tensors))
            results += [
                {"path": str(p), "predictions": preds}
                for p, preds in zip(ok, top_k(probs, classifier.class_names, topk))
            ]
        bar.update(len(chunk))
    bar.close()
    order = {str(p): i for i, p in enumerate(paths)}
    return sorted(results, key=lambda r: order[r["path"]])
