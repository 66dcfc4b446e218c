"""Batched prediction over files, folders, globs and images in memory with a checkpoint's own preprocessing."""

from __future__ import annotations

import csv
import fnmatch
import glob
import io
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data.images import BadImageError, is_image_file
from ..errors import MissingFile, VitkitError
from ..options import option
from .unknown import unknown_answers

_predict = partial(option, group="predict", commands=("predict",))


@dataclass
class PredictOptions:
    """What `vitkit predict` reports and how it batches, declared once for it and for `predict_images`,
    `predict_paths` and `Classifier.predict`, whose defaults they are."""

    topk: int = _predict(5, "labels per image, best first (not for multi-label)", at_least=1)
    format: str = _predict(
        "table",
        "table: one line per image; json: every result with the runtime; csv: one row per label",
        choices=("table", "json", "csv"),
    )
    batch_size: int = _predict(32, "images per batch", at_least=1)
    threshold: float | None = _predict(
        None,
        "multi-label: predict every label whose score reaches this (0-1) instead of the thresholds tuned "
        "on the run's validation split",
    )


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
                raise MissingFile(f"{pattern}: no such file, folder or matching glob")
            found += matches
    return found


def top_k(probs: torch.Tensor, class_names: list[str], k: int) -> list[list[dict]]:
    k = min(k, probs.shape[1])
    scores, index = probs.topk(k, dim=1)
    return [
        [{"label": class_names[i], "score": round(float(s), 6)} for s, i in zip(row_s, row_i)]
        for row_s, row_i in zip(scores.tolist(), index.tolist())
    ]


def above_thresholds(probs: torch.Tensor, class_names: list[str], thresholds: list[float]) -> list[list[dict]]:
    """Multi-label predictions: every label whose score reaches its threshold, best first."""
    keep = probs >= torch.tensor(thresholds, dtype=probs.dtype)
    results = []
    for row, kept in zip(probs.tolist(), keep.tolist()):
        chosen = sorted((k for k, flag in enumerate(kept) if flag), key=lambda k: -row[k])
        results.append([{"label": class_names[k], "score": round(row[k], 6)} for k in chosen])
    return results


def check_threshold(classifier, threshold: float | None) -> None:
    """Refuse a threshold a classifier cannot take, in one line: it is for multi-label classifiers, in (0, 1)."""
    if threshold is None:
        return
    if not classifier.multi_label:
        raise VitkitError(f"--threshold {threshold}: {classifier.name} is single-label; --topk picks its labels")
    if not 0 < threshold < 1:
        raise VitkitError(f"--threshold {threshold}: use a score between 0 and 1, e.g. 0.5")


def classifier_predictions(
    classifier, probs: torch.Tensor, k: int, threshold: float | None = None
) -> list[list[dict]]:
    """What a classifier reports for a batch of scores: the top k, or for a multi-label classifier every
    label above its threshold (`threshold`: one for every label instead of the tuned ones). Scores beyond the
    classes (an unknown-input score, `Classifier.outputs_tensor`) are left out."""
    probs = probs[:, : len(classifier.class_names)]
    if classifier.multi_label:
        thresholds = classifier.thresholds if threshold is None else [threshold] * len(classifier.class_names)
        return above_thresholds(probs, classifier.class_names, thresholds)
    return top_k(probs, classifier.class_names, k)


def classifier_results(classifier, outputs: torch.Tensor, k: int, threshold: float | None = None) -> list[dict]:
    """Per image, {"predictions": ...} (`classifier_predictions`) from `Classifier.outputs_tensor`'s rows;
    when the classifier rejects unknown inputs, also whether the image is "unknown" and its "unknown_score",
    and for an unknown one no predictions but the classes it is nearest to ("nearest", the top k)."""
    predictions = classifier_predictions(classifier, outputs, k, threshold)
    rejection = getattr(classifier, "rejection", None)
    if rejection is None:
        return [{"predictions": preds} for preds in predictions]
    results = []
    for preds, answer in zip(predictions, unknown_answers(rejection, outputs[:, len(classifier.class_names)])):
        unknown = {"predictions": [], "nearest": preds} if answer["unknown"] else {"predictions": preds}
        results.append({**unknown, **answer})
    return results


def predict_images(
    classifier,
    images: list[tuple[dict, Callable[[], torch.Tensor]]],
    topk: int = PredictOptions.topk,
    batch_size: int = PredictOptions.batch_size,
    progress: bool = True,
    threshold: float | None = None,
) -> list[dict]:
    """One result per (identity, decode) pair, in order: the identity ({"path": ...} or {"input": n}) with
    "predictions" [{"label", "score"}, ...] best first (see `classifier_predictions`), or with "error" when
    decode raises BadImageError, so one unreadable image never stops the batch."""
    if topk < 1 or batch_size < 1:
        raise VitkitError(f"topk={topk}, batch_size={batch_size}: both must be at least 1")
    check_threshold(classifier, threshold)
    results: list[dict] = []
    bar = tqdm(total=len(images), unit="img", disable=not progress or len(images) < 2 * batch_size, leave=False)
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        tensors, decoded = [], []
        for identity, decode in chunk:
            try:
                tensors.append(decode())
                decoded.append(len(results))
                results.append(dict(identity))
            except BadImageError as e:
                results.append({**identity, "error": str(e)})
        if tensors:
            outputs = classifier.outputs_tensor(torch.stack(tensors))
            for index, result in zip(decoded, classifier_results(classifier, outputs, topk, threshold)):
                results[index].update(result)
        bar.update(len(chunk))
    bar.close()
    return results


def predict_paths(
    classifier,
    paths: list[Path],
    topk: int = PredictOptions.topk,
    batch_size: int = PredictOptions.batch_size,
    progress: bool = True,
    threshold: float | None = None,
) -> list[dict]:
    """[{"path": ..., "predictions": [{"label", "score"}, ...]}] best first, as `vitkit predict` prints it."""
    images = [({"path": str(p)}, partial(classifier.preprocessing.load_tensor, p)) for p in paths]
    return predict_images(classifier, images, topk, batch_size, progress, threshold)


# What a spreadsheet reads as the start of a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(cell: str) -> str:
    """A text cell a spreadsheet shows as text: one that would start a formula gets a leading quote."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def format_predictions(results: list[dict], fmt: str) -> str:
    """`predict_paths`' results as `vitkit predict --format` prints them: csv (one row per label) or table
    (one line per image)."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "rank", "label", "score"])
        for r in results:
            path = spreadsheet_text(str(r["path"]))
            for rank, p in enumerate(r.get("predictions", []), 1):
                writer.writerow([path, rank, spreadsheet_text(p["label"]), p["score"]])
            if "error" in r:
                writer.writerow([path, "", "ERROR", spreadsheet_text(r["error"])])
            if r.get("unknown"):  # --reject-unknown: the score that fell below the threshold
                writer.writerow([path, "", "unknown", r["unknown_score"]])
        return buffer.getvalue().rstrip("\n")
    lines = []
    for r in results:
        if "error" in r:
            lines.append(f"{r['path']}: ERROR {r['error']}")
            continue
        preds = "  ".join(f"{p['label']} {p['score']:.3f}" for p in r["predictions"] or r.get("nearest", []))
        unknown = f"unknown (score {r['unknown_score']:.3f}), nearest: " if r.get("unknown") else ""
        lines.append(f"{r['path']}: {unknown}{preds}")
    return "\n".join(lines)


def image_from_pixels(pixels: np.ndarray, name: str) -> Image.Image:
    """HxW grey or HxWxC (C = 1, 3 or 4) uint8 pixels as a Pillow image."""
    if pixels.dtype != np.uint8:
        raise VitkitError(f"{name}: pixels of dtype {pixels.dtype}; pass uint8 pixels (0-255), as images are stored")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(pixels), "L")
    if pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(pixels), "RGB" if pixels.shape[2] == 3 else "RGBA")
    raise VitkitError(f"{name}: an array of shape {pixels.shape}; pass HxWx3 (RGB), HxWx4 (RGBA) or HxW (grey) pixels")


def image_from_tensor(tensor: torch.Tensor, name: str) -> Image.Image:
    """A CxHxW (C = 1, 3 or 4) uint8 tensor as a Pillow image."""
    if tensor.dtype != torch.uint8:
        raise VitkitError(f"{name}: a tensor of dtype {tensor.dtype}; pass uint8 pixels (0-255)")
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3, 4):
        raise VitkitError(
            f"{name}: a tensor of shape {tuple(tensor.shape)}; pass CxHxW or NxCxHxW pixels with C = 1, 3 or 4"
        )
    return image_from_pixels(tensor.detach().cpu().permute(1, 2, 0).numpy(), name)


def is_one_image(source) -> bool:
    """Whether `source` is a single image (a file, or one image in memory) rather than a folder, glob or batch."""
    if isinstance(source, (str, os.PathLike)):
        return Path(source).is_file()
    return not (isinstance(source, torch.Tensor) and source.ndim == 4)


def collect_images(inputs, preprocessing) -> list[tuple[dict, Callable[[], torch.Tensor]]]:
    """(identity, decode) pairs for `predict_images` from what `Classifier.predict` accepts: paths, folders
    and globs decode as `vitkit predict` decodes files; images in memory go through the same resize and
    crop once made Pillow images. Inputs of the wrong type, dtype or shape are refused here, naming them."""
    given = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    images: list[tuple[dict, Callable[[], torch.Tensor]]] = []

    def add_in_memory(img: Image.Image, name: str) -> None:
        images.append(({"input": len(images)}, partial(preprocessing.image_tensor, img, name)))

    for i, item in enumerate(given):
        name = f"inputs[{i}]" if isinstance(inputs, (list, tuple)) else "inputs"
        if isinstance(item, (str, os.PathLike)):
            paths = expand_paths([os.fspath(item)])
            images += [({"path": str(p)}, partial(preprocessing.load_tensor, p)) for p in paths]
        elif isinstance(item, Image.Image):
            add_in_memory(item, name)
        elif isinstance(item, np.ndarray):
            add_in_memory(image_from_pixels(item, name), name)
        elif isinstance(item, torch.Tensor):
            for j, image in enumerate(item if item.ndim == 4 else [item]):
                image_name = f"{name}[{j}]" if item.ndim == 4 else name
                add_in_memory(image_from_tensor(image, image_name), image_name)
        else:
            raise TypeError(
                f"{name} is a {type(item).__name__}; pass file paths, folders, globs, PIL images, numpy arrays "
                "or uint8 torch tensors (or a list of them)"
            )
    return images
