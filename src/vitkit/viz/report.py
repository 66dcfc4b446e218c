"""Render the run folder's figures from a trained model and its test split."""

from __future__ import annotations

from pathlib import Path

import torch

from . import plots


def sample_images(split, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random sample of (uint8 images, labels) from an in-memory or streamed split."""
    from ..data.loader import BatchLoader

    pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    images, labels = next(BatchLoader(split.subset(pick), count, shuffle=False).batches())
    return images.cpu(), labels.cpu()


def display_images(images: torch.Tensor, augment) -> torch.Tensor:
    """uint8 images as the model sees them (its size and channels), still uint8 for plotting."""
    x = augment.resize(images.float())
    from ..data.augment import to_channels

    return to_channels(x, augment.channels).round().clamp(0, 255).to(torch.uint8)


@torch.inference_mode()
def write_report(run_dir: Path, model, test_split, augment, class_names, history, test_metrics):
    plots.plot_curves(history, run_dir / "curves.png")
    plots.plot_confusion_matrix(test_metrics["confusion_matrix"], class_names, run_dir / "confusion_matrix.png")
    images, labels = sample_images(test_split, 16)
    device = next(model.parameters()).device
    model.eval()
    probs = model(augment.eval(images.to(device))).float().softmax(-1).cpu()
    scores, pred = probs.max(dim=1)
    shown = display_images(images, augment).numpy()
    plots.plot_predictions(
        shown, labels.tolist(), pred.tolist(), scores.tolist(), class_names, run_dir / "predictions.png"
    )
    tokenizer = getattr(model, "patch_embed", None)
    patch = tokenizer.stride if tokenizer is not None else max(4, augment.out_size // 8)
    plots.plot_patches(shown[0], patch, run_dir / "patches.png")
