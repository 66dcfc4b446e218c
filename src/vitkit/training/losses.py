"""Training losses: `training_loss` picks a run's; the multi-label ones on sigmoid outputs are binary
cross-entropy and the asymmetric loss.

Both sum over the labels and average over the images, so that a batch's loss has the scale of the
single-label cross-entropy (a sum over the classes of the one-hot target) and the same learning rates fit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOG_EPSILON = 1e-8  # the asymmetric loss's floor inside log(1 - p), as in its reference implementation


def binary_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over images of the sum over labels of BCE-with-logits; `pos_weight` multiplies each label's
    positive term (torch's pos_weight)."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
    return loss.sum(1).mean()


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The asymmetric loss (Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021):
    with p = sigmoid(logit) and the shifted probability p_m = max(p - clip, 0),
        L = -[ y (1 - p)^gamma_pos log p  +  (1 - y) p_m^gamma_neg log(1 - p_m) ]
    summed over labels, averaged over images. Easy negatives (small p) are down-weighted and those under
    `clip` ignored, which keeps the many negatives of imbalanced labels from drowning the positives.
    With gamma_neg = gamma_pos = clip = 0 it is binary cross-entropy. Soft targets (MixUp, smoothing) weigh
    the two terms."""
    p = torch.sigmoid(logits)
    log_p = F.logsigmoid(logits)
    if clip > 0:
        p_neg = (p - clip).clamp(min=0)
        log_not_p = torch.log((1 - p_neg).clamp(min=LOG_EPSILON))
    else:
        p_neg, log_not_p = p, F.logsigmoid(-logits)
    positive = targets * log_p
    if gamma_pos > 0:
        positive = positive * (1 - p).pow(gamma_pos)
    if pos_weight is not None:
        positive = positive * pos_weight
    negative = (1 - targets) * log_not_p
    if gamma_neg > 0:
        negative = negative * p_neg.pow(gamma_neg)
    return -(positive + negative).sum(1).mean()


def positive_weights(labels: torch.Tensor) -> torch.Tensor:
    """Class-balanced positive weights of (N, K) 0/1 training labels: negatives / positives per label, so
    that each label's positives weigh as much in the loss as its negatives; 1 for a label without
    positives (nothing to weigh)."""
    positives = labels.sum(0)
    negatives = len(labels) - positives
    return torch.where(positives > 0, negatives / positives.clamp(min=1), 1.0).float()


def training_loss(
    logits: torch.Tensor, targets: torch.Tensor, cfg, multi_label: bool, weights: torch.Tensor | None
) -> torch.Tensor:
    """The training loss of soft targets under a run's configuration (a TrainConfig): cross-entropy, or for
    multi-label data BCE or the asymmetric loss on sigmoid outputs; all are means over the images."""
    if not multi_label:
        # with soft targets torch divides the (class-weighted) sum by the chunk's size, not by
        # its weights' sum, so the chunks still add up to the whole batch's loss
        return F.cross_entropy(logits, targets, weight=weights)
    if cfg.multilabel_loss == "asymmetric":
        return asymmetric_loss(logits, targets, cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip, weights)
    return binary_cross_entropy(logits, targets, weights)
