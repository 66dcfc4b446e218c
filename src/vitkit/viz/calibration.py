"""reliability.png: accuracy against confidence per confidence bin, before and after temperature scaling."""

from __future__ import annotations

import os

import torch

from ..eval.calibration import ECE_BINS, expected_calibration_error, reliability_bins


def plot_reliability(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float, title: str, path: str | os.PathLike
) -> None:
    """Two panels (T = 1 and the fitted T): each bin's accuracy as a bar against the diagonal a perfectly
    calibrated model follows, with the bin's share of the images and the ECE."""
    from .plots import _save, plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    edges = [i / ECE_BINS for i in range(ECE_BINS)]
    width = 1 / ECE_BINS
    for ax, t, name in zip(axes, (1.0, temperature), ("before (T = 1)", f"after (T = {temperature:.3f})")):
        probs = (logits.double() / t).softmax(dim=1)
        bins = reliability_bins(probs, labels)
        accuracy = [a if a is not None else 0.0 for a in bins["accuracy"]]
        total = max(sum(bins["count"]), 1)
        ax.bar(edges, accuracy, width=width, align="edge", color="#4c72b0", edgecolor="white", label="accuracy")
        ax.bar(edges, [c / total for c in bins["count"]], width=width, align="edge", color="#dd8452", alpha=0.45,
               label="share of images")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ax.set_title(f"{name}: ECE {expected_calibration_error(probs, labels):.4f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top class probability)")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    _save(fig, path)
