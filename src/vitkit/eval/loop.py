"""The evaluation loop shared by training (validation, test) and `vitkit eval`."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.augment import BatchAugment
from ..data.loader import BatchLoader
from .metrics import MetricAccumulator


def eval_logits(model: nn.Module, images: torch.Tensor, flip_tta: bool = False, crop_tta: bool = False) -> torch.Tensor:
    """fp32 logits of prepared images; with `flip_tta`, the mean of the logits of each image and its
    mirror image (test-time flip augmentation: one more forward pass for a steadier prediction). With
    `crop_tta` also of two crops moved one pixel diagonally either way (edges reflected), weighted a
    quarter each against half for the image itself, as airbench's multi-crop evaluation (with
    `flip_tta` each view is averaged with its mirror: six passes)."""
    logits = model(images).float()
    if flip_tta:
        logits = (logits + model(images.flip(-1)).float()) / 2
    if crop_tta:
        height, width = images.shape[-2:]
        padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
        shifted = [padded[..., :height, :width], padded[..., 2:, 2:]]
        logits = logits / 2 + sum(eval_logits(model, view.contiguous(), flip_tta) for view in shifted) / 4
    return logits


@torch.inference_mode()
def evaluate_loader(
    model: nn.Module,
    loader: BatchLoader,
    augment: BatchAugment,
    num_classes: int,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    flip_tta: bool = False,
    crop_tta: bool = False,
) -> MetricAccumulator:
    """Loss, top-k and confusion matrix over a loader; `all_reduce_sum` sums the counts across ranks.
    Always fp32, whatever the training precision, so `vitkit eval` reproduces every reported metric."""
    model.eval()
    acc = MetricAccumulator(num_classes, device=loader.device)
    for images, labels in loader.batches():
        logits = eval_logits(model, augment.for_inference(images), flip_tta, crop_tta)
        acc.update(logits, labels, F.cross_entropy(logits, labels, reduction="sum"))
    if all_reduce_sum is not None:
        acc.load_tensor(all_reduce_sum(acc.as_tensor()))
    return acc


@torch.inference_mode()
def per_sample_predictions(
    model: nn.Module, loader: BatchLoader, augment: BatchAugment, flip_tta: bool = False, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, class probabilities) of every image of a loader, in its order, on the CPU; fp32 as in
    `evaluate_loader`, of the logits divided by the calibration `temperature`."""
    model.eval()
    losses, probs = [], []
    for images, labels in loader.batches():
        logits = eval_logits(model, augment.for_inference(images), flip_tta) / temperature
        losses.append(F.cross_entropy(logits, labels, reduction="none").cpu())
        probs.append(logits.softmax(dim=1).cpu())
    return torch.cat(losses), torch.cat(probs)
