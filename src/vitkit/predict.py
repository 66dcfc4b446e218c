"""Batched prediction over files, folders and globs with a checkpoint's own preprocessing."""

from __future__ import annotations

import fnmatch
import glob
import os
from pathlib import Path
from typing import Iterable, Iterator

import torch
from tqdm.auto import tqdm

from .data.images import BadImageError, is_image_file


def walk_files(root: Path) -> Iterator[Path]:
    """Every file under `root`, following links to folders but entering each real folder once, so a link
    loop ends instead of recursing forever."""
    seen: set[tuple[int, int]] = set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in seen:
            subfolders.clear()
            continue
        seen.add((stat.st_dev, stat.st_ino))
        for name in files:
            yield Path(folder) / name


def _has_magic(part: str) -> bool:
    return any(c in part for c in "*?[")


def _match_parts(names: tuple[str, ...], patterns: tuple[str, ...]) -> bool:
    """glob's rules on path components: `**` spans any number of folders; wildcards skip hidden names."""
    if not patterns:
        return not names
    head, rest = patterns[0], patterns[1:]
    if head == "**":
        visible = next((i for i, n in enumerate(names) if n.startswith(".")), len(names))
        return any(_match_parts(names[i:], rest) for i in range(visible + 1))
    if not names or (names[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(names[0], head) and _match_parts(names[1:], rest)


def glob_files(pattern: str) -> list[Path]:
    """Files matching a glob; `**` walks with `walk_files` because glob's own recursion follows link loops
    forever."""
    if "**" not in pattern:
        return sorted(Path(p) for p in glob.glob(pattern) if os.path.isfile(p))
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if _has_magic(part))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    return sorted(f for f in walk_files(root) if _match_parts(f.relative_to(root).parts, parts[fixed:]))


def expand_paths(patterns: Iterable[str]) -> list[Path]:
    """Files as given, folders searched recursively for images, globs expanded; missing ones named."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found += sorted(p for p in walk_files(path) if is_image_file(p))
        elif path.is_file():
            found.append(path)
        else:
            matches = glob_files(pattern)
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
    if topk < 1 or batch_size < 1:
        raise ValueError(f"topk={topk}, batch_size={batch_size}: both must be at least 1")
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
