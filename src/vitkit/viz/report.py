"""Render the run folder's figures from a trained model and its test split. The plots (and
matplotlib) are imported only when a figure is drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..runfiles import (
    CONFUSION_MATRIX_FIGURE,
    CURVES_FIGURE,
    LABEL_AP_FIGURE,
    MULTI_LABEL_FIGURES,
    PATCHES_FIGURE,
    PRECISION_RECALL_FIGURE,
    PREDICTIONS_FIGURE,
    SINGLE_LABEL_FIGURES,
)

PREDICTION_IMAGES = 16
# The most figures a run's report draws (write_report's or write_multilabel_report's): a --time-budget
# keeps time for this many.
REPORT_FIGURES = max(len(SINGLE_LABEL_FIGURES), len(MULTI_LABEL_FIGURES))


def sample_images(split, count: int, seed: int = 0, stratified: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random sample of (uint8 images, labels) from an in-memory or streamed split; `stratified`
    takes the classes in turn, so that every class is shown while count allows (a plain sample of 16
    images from 5 classes left one out)."""
    from ..data.loader import BatchLoader

    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    if stratified:
        labels = split.labels[order]
        # rank of each image within its class in the shuffled order: the first of every class come first
        rank = torch.zeros(len(order), dtype=torch.long)
        for c in labels.unique():
            members = (labels == c).nonzero().flatten()
            rank[members] = torch.arange(len(members))
        order = order[torch.argsort(rank, stable=True)]
    pick = order[:count].sort().values
    images, labels = next(BatchLoader(split.subset(pick), count, shuffle=False).batches())
    return images.cpu(), labels.cpu()


def display_images(images: torch.Tensor, augment) -> torch.Tensor:
    """uint8 images as the model sees them (its size and channels), still uint8 for plotting."""
    x = augment.resize(images.float())
    from ..data.augment import to_channels

    return to_channels(x, augment.channels).round().clamp(0, 255).to(torch.uint8)


@torch.inference_mode()
def write_report(run_dir: Path, model, split, augment, class_names, history, metrics, split_name: str):
    """The figures of a single-label run (`SINGLE_LABEL_FIGURES`): curves, confusion matrix, predictions
    (images of every class) of the reported split, titled with its name (`split_name`), and the patch grid
    of a patch model."""
    from . import plots

    plots.plot_curves(history, len(class_names), run_dir / CURVES_FIGURE)
    plots.plot_confusion_matrix(
        metrics["confusion_matrix"], class_names, run_dir / CONFUSION_MATRIX_FIGURE, f"{split_name}, best weights"
    )
    images, labels = sample_images(split, PREDICTION_IMAGES, stratified=True)
    device = next(model.parameters()).device
    model.eval()
    probs = model(augment.for_inference(images.to(device))).float().softmax(-1).cpu()
    scores, pred = probs.max(dim=1)
    shown = display_images(images, augment).numpy()
    plots.plot_predictions(
        shown, labels.tolist(), pred.tolist(), scores.tolist(), class_names, run_dir / PREDICTIONS_FIGURE, split_name
    )
    if model.patch_size is not None:
        plots.plot_patches(shown[0], model.patch_size, run_dir / PATCHES_FIGURE)


PR_CURVE_LABELS = 5  # the precision-recall figure draws the pooled curve and the most frequent labels
MULTILABEL_LOSS_NAMES = {"bce": "BCE", "asymmetric": "asymmetric loss"}  # --multilabel-loss, as legends name it
TITLE_LABELS = 3  # predicted labels named in a prediction's title, best first; the rest counted


@torch.inference_mode()
def write_multilabel_report(
    run_dir: Path, model, split, augment, history, report, scores, targets, split_name: str, training_loss: str
):
    """The figures of a multi-label run (`MULTI_LABEL_FIGURES`): curves (`training_loss` names the
    training loss beside the validation BCE), AP per label, precision-recall and predictions (predicted
    label sets against the true ones) on `split`, titled with its name (`split_name`)."""
    from ..eval.multilabel import precision_recall_curve
    from . import plots

    names = report["class_names"]
    losses = {"train": MULTILABEL_LOSS_NAMES.get(training_loss, training_loss), "val": "BCE"}
    plots.plot_curves(history, len(names), run_dir / CURVES_FIGURE, losses)
    plots.plot_label_ap(report, run_dir / LABEL_AP_FIGURE, split_name)
    curves = {"all labels (micro)": (*precision_recall_curve(scores.flatten(), targets.flatten()), report["map_micro"])}
    for k in targets.sum(0).argsort(descending=True)[:PR_CURVE_LABELS].tolist():
        if report["per_label"][names[k]]["ap"] is not None:
            curves[names[k]] = (
                *precision_recall_curve(scores[:, k], targets[:, k]),
                report["per_label"][names[k]]["ap"],
            )
    plots.plot_precision_recall(curves, run_dir / PRECISION_RECALL_FIGURE, split_name)
    images, labels = sample_images(split, 16)
    device = next(model.parameters()).device
    model.eval()
    probs = model(augment.for_inference(images.to(device))).float().sigmoid().cpu()
    thresholds = torch.tensor(report["thresholds"])
    titles, mistakes = [], []
    for row, truth in zip(probs, labels):
        above = sorted((k for k in (row >= thresholds).nonzero().flatten().tolist()), key=lambda k: -row[k])
        true = {names[k] for k in truth.nonzero().flatten().tolist()}
        shown_labels = ", ".join(names[k] for k in above[:TITLE_LABELS])
        more = f" +{len(above) - TITLE_LABELS}" if len(above) > TITLE_LABELS else ""
        titles.append(f"{shown_labels or '-'}{more}\ntrue: {', '.join(sorted(true))}")
        mistakes.append({names[k] for k in above} != true)
    shown = display_images(images, augment).numpy()
    heading = f"label sets, {split_name} (red: not exact)"
    plots.plot_image_grid(shown, titles, run_dir / PREDICTIONS_FIGURE, heading, mistakes)


def target_title(target: torch.Tensor, class_names: list[str]) -> str:
    """The classes a (possibly mixed or smoothed) target is made of: 'cat', or 'cat 0.70 + dog 0.30'."""
    weights, classes = target.sort(descending=True)
    parts = [(class_names[c], w) for c, w in zip(classes.tolist(), weights.tolist()) if w >= 0.2]
    return parts[0][0] if len(parts) == 1 else " + ".join(f"{name} {w:.2f}" for name, w in parts)


@torch.no_grad()
def write_train_batch(
    path: Path,
    train_split,
    augment,
    make_batch: Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    class_names: list[str],
    seed: int,
    device: torch.device,
    count: int = 16,
) -> None:
    """A mosaic of training images as the model receives them: augmented (and mixed) by `make_batch`
    with its own generator, so training's random streams are untouched, then de-normalised."""
    from . import plots

    images, labels = sample_images(train_split, count, seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    x, targets = make_batch(images.to(device), labels.to(device), generator)
    titles = [target_title(t, class_names) for t in targets.cpu()]
    plots.plot_image_grid(augment.to_uint8(x).cpu().numpy(), titles, path, "a training batch as the model sees it")
