"""The run folder's figures: curves, confusion matrix, image grids (predictions, a training batch, top
losses), patch grid and the learning-rate sweep. Only plotting imports this module (and matplotlib)."""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..fileio import atomic_path  # noqa: E402

TOP5_MIN_CLASSES = 6  # with 5 classes or fewer top-5 accuracy is 1 by definition


def _save(fig, path: str | os.PathLike, tight: bool = True) -> None:
    """`tight` crops the figure to what is drawn, at the price of drawing it twice."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight" if tight else None, format="png")
    plt.close(fig)


def _image(img: np.ndarray):
    """(C, H, W) or (H, W, C) uint8 -> something imshow draws correctly."""
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = img.transpose(1, 2, 0)
    return (img[..., 0], "gray") if img.shape[-1] == 1 else (img, None)


def _finite(values) -> bool:
    return any(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in values)


def plot_curves(history: list[dict], num_classes: int, path, losses: dict[str, str] | None = None) -> None:
    """Loss, top-1 (and top-5 when there are more than 5 classes) per epoch, train against validation,
    and the learning rate each epoch ended with. `losses` names each split's loss in the legend where
    they differ (multi-label: the training loss against the validation BCE, both means per label)."""
    epochs = [h["epoch"] for h in history]
    losses = losses or {}
    panels = [("loss", "loss"), ("top1", "top-1 accuracy")]
    if num_classes >= TOP5_MIN_CLASSES:
        panels.append(("top5", "top-5 accuracy"))
    if any("val_map" in h for h in history):  # multi-label: mAP of the validation split
        panels = [("loss", "loss (mean per label)"), ("map", "mAP (macro)"), ("map_micro", "mAP (micro)")]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.6 * (len(panels) + 1), 3.8), layout="constrained")
    for ax, (key, title) in zip(axes, panels):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [h.get(f"{split}_{key}") for h in history]
            if _finite(values):
                label = f"{split}: {losses[split]}" if key == "loss" and split in losses else split
                ax.plot(epochs, [np.nan if v is None else v for v in values], style, label=label, markersize=3)
        ax.set_title(title)
        if ax.lines:
            ax.legend()
    lr_axis = axes[-1]
    lr_axis.plot(epochs, [h.get("lr", np.nan) for h in history], "-o", color="tab:green", markersize=3)
    lr_axis.set_title("learning rate (end of epoch)")
    lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _save(fig, path)


def plot_confusion_matrix(confusion, class_names: list[str], path, title: str | None = None) -> None:
    """Counts and row-normalised rates side by side, labelled with class names; empty cells are 0."""
    cm = np.asarray(confusion, dtype=np.int64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    size = max(5.0, min(0.45 * n + 2, 30))
    # constrained layout keeps the colour bars clear of the next matrix's class names
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 2, size), layout="constrained")
    annotate = n <= 30
    long_names = max(map(len, class_names)) * n > 40
    for ax, data, title, fmt in ((axes[0], cm, "counts", "d"), (axes[1], norm, "normalised (recall)", ".2f")):
        im = ax.imshow(data, cmap="Blues")
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(
            range(n), class_names, fontsize=8, rotation=45 if long_names else 0, ha="right" if long_names else "center"
        )
        ax.set_yticks(range(n), class_names, fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8)
        if annotate:
            top = data.max() if data.size else 0
            for i, j in zip(*np.nonzero(cm)):
                colour = "white" if data[i, j] > top / 2 else "black"
                ax.text(j, i, format(data[i, j], fmt), ha="center", va="center", fontsize=7, color=colour)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def plot_image_grid(
    images: np.ndarray, titles: list[str], path, suptitle: str, mistakes: list[bool] | None = None, columns: int = 4
) -> None:
    """Images (uint8, CHW or HWC) in a grid with a title each; mistakes get a red title and frame.

    Every image is drawn into one axes at its own place (`extent`): one axes per image cost most of a
    training run's report time, spent laying out ticks that are never shown."""
    n = len(images)
    mistakes = mistakes or [False] * n
    rows = max(1, math.ceil(n / columns))
    cell_w, cell_h, title_h = 1.1, 1.3, 0.3  # in units of one image's side
    inch, heading = 2.2, 0.5  # one image's side and the suptitle's band, in inches
    width, height = columns * cell_w * inch, rows * cell_h * inch
    fig = plt.figure(figsize=(width, height + heading))
    ax = fig.add_axes((0, 0, 1, height / (height + heading)))
    ax.axis("off")
    for i, (img, title, wrong) in enumerate(zip(images, titles, mistakes)):
        data, cmap = _image(img)
        x0, y0 = (i % columns) * cell_w, (i // columns) * cell_h + title_h
        ax.imshow(data, cmap=cmap, vmin=0, vmax=255, extent=(x0, x0 + 1, y0 + 1, y0), interpolation="nearest")
        colour = "red" if wrong else ("green" if any(mistakes) else "black")
        ax.text(x0 + 0.5, y0 - 0.04, title, ha="center", va="bottom", fontsize=8, color=colour)
        if wrong:
            ax.add_patch(Rectangle((x0, y0), 1, 1, fill=False, edgecolor="red", linewidth=3))
    ax.set_xlim(-(cell_w - 1) / 2, columns * cell_w - (cell_w - 1) / 2)
    ax.set_ylim(rows * cell_h, 0)
    fig.suptitle(suptitle, y=1 - 0.15 / (height + heading), va="top")
    _save(fig, path, tight=False)


def plot_predictions(
    images: np.ndarray,
    true: list[int],
    pred: list[int],
    scores: list[float],
    class_names: list[str],
    path,
    split_name: str,
) -> None:
    """Grid of images titled 'pred (score) / true'; mistakes in red with a red frame."""
    titles = [f"{class_names[p]} ({s:.2f})\ntrue: {class_names[t]}" for t, p, s in zip(true, pred, scores)]
    mistakes = [t != p for t, p in zip(true, pred)]
    plot_image_grid(images, titles, path, f"predictions on the {split_name} (red: mistakes)", mistakes)


def patch_mosaic(data: np.ndarray, patch_size: int, gap: int = 1) -> np.ndarray:
    """An (H, W[, C]) image cut into its patches with `gap` white pixels between them, as one array:
    one imshow instead of one subplot per patch (196 subplots at 224 px took seconds to lay out)."""
    gh, gw = data.shape[0] // patch_size, data.shape[1] // patch_size
    step = patch_size + gap
    mosaic = np.full((gh * step - gap, gw * step - gap, *data.shape[2:]), 255, dtype=data.dtype)
    for i in range(gh):
        for j in range(gw):
            mosaic[i * step : i * step + patch_size, j * step : j * step + patch_size] = data[
                i * patch_size : (i + 1) * patch_size, j * patch_size : (j + 1) * patch_size
            ]
    return mosaic


def plot_patches(image: np.ndarray, patch_size: int, path) -> None:
    """A sample image (at the model's input size) and its grid of patches, as in the Keras example."""
    data, cmap = _image(image)
    h, w = data.shape[:2]
    gap = max(1, patch_size // 8)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 5))
    left.imshow(data, cmap=cmap, vmin=0, vmax=255)
    left.set_title(f"{h}x{w} image")
    right.imshow(patch_mosaic(data, patch_size, gap), cmap=cmap, vmin=0, vmax=255)
    right.set_title(f"{(h // patch_size) * (w // patch_size)} patches of {patch_size}x{patch_size}")
    for ax in (left, right):
        ax.axis("off")
    _save(fig, path)


def plot_lr_find(lrs: list[float], losses: list[float], smoothed: list[float], suggestion: float | None, path) -> None:
    """Training loss against the learning rate of an exponential sweep (log axis), raw and smoothed,
    with the suggested rate marked (none when the curve shows no descent)."""
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    ax.plot(lrs, losses, color="tab:blue", alpha=0.3, label="loss")
    ax.plot(lrs, smoothed, color="tab:blue", label="smoothed loss")
    if suggestion is not None:
        ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested lr {suggestion:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    # framed on the smoothed descent: a diverging tail would flatten everything before it
    pad = max(smoothed[0] - min(smoothed), 0.05 * abs(smoothed[0]), 1e-3)
    ax.set_ylim(min(smoothed) - pad, max(smoothed[0], min(smoothed)) + 2 * pad)
    ax.set_title("learning-rate sweep" + ("" if suggestion is not None else ": no descent, no suggestion"))
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_label_ap(report: dict, path, split_name: str) -> None:
    """Average precision per label on a split (`split_name`), most frequent label first, bars annotated
    with the label's positives; macro and micro mAP as lines."""
    items = sorted(report["per_label"].items(), key=lambda item: -item[1]["support"])
    names = [name for name, _ in items]
    ap = [np.nan if m["ap"] is None else m["ap"] for _, m in items]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(names) + 2), 4.2), layout="constrained")
    ax.bar(range(len(names)), ap, color="tab:blue")
    for i, (_, m) in enumerate(items):
        ax.text(i, (0 if m["ap"] is None else m["ap"]) + 0.01, str(m["support"]), ha="center", fontsize=6)
    ax.axhline(report["map_macro"], color="tab:red", linestyle="--", label=f"macro mAP {report['map_macro']:.3f}")
    ax.axhline(report["map_micro"], color="tab:green", linestyle=":", label=f"micro mAP {report['map_micro']:.3f}")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("average precision")
    ax.set_title(f"average precision per label, {split_name} (number above: positives)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)


def plot_precision_recall(curves: dict[str, tuple], path, split_name: str) -> None:
    """Precision against recall on a split (`split_name`): {name: (precision, recall, average precision)},
    e.g. all labels pooled (micro) and the most frequent labels."""
    fig, ax = plt.subplots(figsize=(6, 5), layout="constrained")
    for i, (name, (precision, recall, ap)) in enumerate(curves.items()):
        style = dict(color="black", linewidth=2) if i == 0 else dict(linewidth=1, alpha=0.8)
        ax.step(recall, precision, where="post", label=f"{name} (AP {ap:.3f})", **style)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"precision-recall, {split_name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)
