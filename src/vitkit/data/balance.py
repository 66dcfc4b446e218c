"""Class balance of a training split: loss weights per class and sampling weights per image."""

from __future__ import annotations

import torch


def balanced_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n / (k * count_c) per class (scikit-learn's "balanced"): every class contributes equally to the
    loss, and the weights average to 1 over the images, so the loss keeps its scale. A class without
    images gets weight 0."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    weights = torch.where(counts > 0, len(labels) / (num_classes * counts.clamp(min=1)), 0.0)
    return weights.float()


def balanced_sample_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One weight per image, proportional to 1 / its class's count: drawn by these, every class is
    equally likely."""
    return balanced_class_weights(labels, num_classes)[labels].double()
