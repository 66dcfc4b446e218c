"""Render the run folder's figures from a trained model and its test split."""
from __future__ import annotations

from pathlib import Path

import torch

from . import plots


def sample_images(loader, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random sample of (uint8 images, labels) from an in-memory or streamed split."""
    n = len(loader.split)
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count].sort().values
    images, labels = [], []
    for batch_images, batch_labels in loader.batches():
        images.append(batch_images.cpu())
        labels.append(batch_labels.cpu())
        if sum(len(x) for x in labels) > pick[-1]:
            break
    images, labels = torch.cat(images), torch.cat(labels)
    return images[pick], labels[pick]


def display_images(images: torch.Tensor, augment) -> torch.Tensor:
    """uint8 images as the model sees them (its size and channels), still uint8 for plotting."""
    x = augment.resize(images.float())
    from ..data.augment import to_channels
    return to_channels(x, augment.channels).round().clamp(0, 255).to(torch.uint8)


@torch.inference_mode()
def write_report(run_dir: Path, model, test_loader, augment, class_names, history, test_metrics, bf16=False):
    plots.plot_curves(history, run_dir / "curves.png")
    plots.plot_confusion_matrix(test_metrics["confusion_matrix"], class_names, run_dir / "confusion_matrix.png")
    images, labels = sample_images(test_loader, 16)
    device = next(model.parameters()).device
    model.eval()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        probs = model(augment.eval(images.to(device))).float().softmax(-1).cpu()
    scores, pred = probs.max(dim=1)
    shown = display_images(images, augment).numpy()
    plots.plot_predictions(shown, labels.tolist(), pred.tolist(), scores.tolist(), class_names,
                           run_dir / "predictions.png")
    patch = getattr(model.config, "patch_size", None) or max(4, augment.out_size // 8)
    plots.plot_patches(shown[0], patch, run_dir / "patches.png")
