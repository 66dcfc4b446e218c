"""The run folder's figures: curves, confusion matrix, prediction grid and patch grid."""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..fileio import atomic_path  # noqa: E402


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _image(img: np.ndarray):
    """(C, H, W) or (H, W, C) uint8 -> something imshow draws correctly."""
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = img.transpose(1, 2, 0)
    return (img[..., 0], "gray") if img.shape[-1] == 1 else (img, None)


def plot_curves(history: list[dict], path) -> None:
    """Loss, top-1 and top-5 per epoch, train against validation."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, title in zip(axes, ("loss", "top1", "top5"), ("loss", "top-1 accuracy", "top-5 accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [h.get(f"{split}_{key}") for h in history]
            if any(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], style, label=split, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def plot_confusion_matrix(confusion, class_names: list[str], path) -> None:
    """Counts and row-normalised rates side by side, labelled with class names."""
    cm = np.asarray(confusion, dtype=np.int64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    size = max(5.0, min(0.45 * n + 2, 30))
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    annotate = n <= 30
    for ax, data, title, fmt in ((axes[0], cm, "counts", "d"), (axes[1], norm, "normalised (recall)", ".2f")):
        im = ax.imshow(data, cmap="Blues")
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(n), class_names, rotation=90 if n > 5 else 0, fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
        if annotate:
            top = data.max() if data.size else 0
            for i in range(n):
                for j in range(n):
                    ax.text(
                        j,
                        i,
                        format(data[i, j], fmt),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if data[i, j] > top / 2 else "black",
                    )
    _save(fig, path)


def plot_predictions(
    images: np.ndarray,
    true: list[int],
    pred: list[int],
    scores: list[float],
    class_names: list[str],
    path,
    columns: int = 4,
) -> None:
    """Grid of images titled 'pred (score) / true'; mistakes in red with a red frame."""
    n = len(images)
    rows = max(1, math.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.6, rows * 2.9))
    for ax in np.atleast_1d(axes).flatten():
        ax.axis("off")
    for ax, img, t, p, s in zip(np.atleast_1d(axes).flatten(), images, true, pred, scores):
        data, cmap = _image(img)
        ax.imshow(data, cmap=cmap)
        wrong = t != p
        ax.set_title(
            f"{class_names[p]} ({s:.2f})\ntrue: {class_names[t]}", fontsize=8, color="red" if wrong else "green"
        )
        if wrong:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(3)
    fig.suptitle("test predictions (red: mistakes)")
    _save(fig, path)


def plot_patches(image: np.ndarray, patch_size: int, path) -> None:
    """A sample image (at the model's input size) and its grid of patches, as in the Keras example."""
    data, cmap = _image(image)
    h, w = data.shape[:2]
    gh, gw = h // patch_size, w // patch_size
    fig = plt.figure(figsize=(10, 5))
    ax = fig.add_subplot(1, 2, 1)
    ax.imshow(data, cmap=cmap)
    ax.set_title(f"{h}x{w} image")
    ax.axis("off")
    grid = fig.add_gridspec(gh, gw, left=0.52, right=0.98, wspace=0.08, hspace=0.08)
    for i in range(gh):
        for j in range(gw):
            sub = fig.add_subplot(grid[i, j])
            sub.imshow(
                data[i * patch_size : (i + 1) * patch_size, j * patch_size : (j + 1) * patch_size],
                cmap=cmap,
                vmin=0,
                vmax=255,
            )
            sub.axis("off")
    fig.suptitle(f"{gh * gw} patches of {patch_size}x{patch_size}")
    _save(fig, path)
