"""Scores a user can trust, fitted on a single-label checkpoint's validation split and kept with it: the
calibration temperature (`calibration.py`) and the unknown-input rejection thresholds (`ood.py`), in its
config.json under "calibration" and "ood", and the training features knn compares against in
OOD_FEATURES. `vitkit train` fits them at the end of a run; `vitkit calibrate RUN` for a run made before."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..data.loader import BatchLoader
from ..data.splits import limit_split
from ..fileio import atomic_path, read_json, write_json
from ..models.io import CONFIG_NAME
from ..runfiles import BEST, LAST, RELIABILITY_FIGURE
from .calibration import calibration_report
from .ood import DEFAULT_KEEP, DEFAULT_METHOD, KNN_K, MAX_BANK, METHODS, keep_threshold, normalise, ood_scores

OOD_FEATURES = "ood_features.safetensors"


def penultimate(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, the pooled features the head reads) of prepared images, in one pass."""
    pooled = model.pool(model.forward_features(images))
    return model.forward_head(pooled).float(), pooled.float()


def mirrors_for_scores(hflip: bool) -> bool:
    """Whether unknown-input scores read each image with its mirror: for a model trained with flips
    (`hflip`), to which a mirrored image is as familiar as the image itself. The two views' mean logits and
    features separate unknown images better than either view (measured: the docs' scores page), and
    mirroring an image the model never saw mirrored (digits, text) would make it look unknown, so the
    others score one view."""
    return bool(hflip)


def mirror_mean(outputs: tuple, mirrored: tuple) -> tuple:
    """The mean of an image's outputs (logits, features: tensors, or None where not computed) and its
    mirror's."""
    return tuple(None if a is None else (a + b) / 2 for a, b in zip(outputs, mirrored, strict=True))


@torch.inference_mode()
def model_outputs(
    model: nn.Module, loader: BatchLoader, transform, mirror: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, labels, and the logits and penultimate features unknown-input scores read: `mirror_mean`
    of each image and its mirror when `mirror`) of every image of a loader, in fp32 on the CPU."""
    model.eval()
    logits, labels, score_logits, features = [], [], [], []
    for images, targets in loader.batches():
        x = transform(images)
        out, pooled = penultimate(model, x)
        logits.append(out.cpu())
        if mirror:
            out, pooled = mirror_mean((out, pooled), penultimate(model, x.flip(-1)))
        score_logits.append(out.cpu())
        features.append(pooled.cpu())
        labels.append(targets.cpu())
    return torch.cat(logits), torch.cat(labels), torch.cat(score_logits), torch.cat(features)


def fit_trust(
    model: nn.Module,
    data,
    eval_split: str,
    transform,
    device,
    batch_size: int = 256,
    keep: float = DEFAULT_KEEP,
    bank_images: int = MAX_BANK,
    mirror: bool = False,
) -> dict:
    """Temperature, rejection thresholds and the training-feature bank of `model` on a Dataset `data` with
    a validation split; the calibration measured on `eval_split` ("test" or "val"). Returns {"calibration",
    "ood", "bank", and the logits and labels of the reported split for the reliability diagram}. The bank
    holds the features of at most `bank_images` training images. With `mirror` (`mirrors_for_scores`) the
    thresholds and the bank come from each image's mean with its mirror, as `--reject-unknown` then scores;
    the temperature from the image alone, as predictions read it."""
    loader = lambda split: BatchLoader(split, batch_size, shuffle=False, device=device)  # noqa: E731
    val_logits, val_labels, val_score_logits, val_features = model_outputs(model, loader(data.val), transform, mirror)
    if eval_split == "val":
        logits, labels = val_logits, val_labels
    else:
        logits, labels, _, _ = model_outputs(model, loader(data.test), transform)
    calibration = calibration_report(val_logits, val_labels, logits, labels, eval_split)
    bank_split = limit_split(data.train, min(bank_images, MAX_BANK), seed=0)
    *_, train_features = model_outputs(model, loader(bank_split), transform, mirror)
    bank = normalise(train_features).half()
    temperature = calibration["temperature"]
    thresholds = {
        method: keep_threshold(ood_scores(method, val_score_logits, temperature, val_features, bank), keep)
        for method in METHODS
    }
    ood = {
        "method": DEFAULT_METHOD,
        "thresholds": thresholds,
        "keep": keep,
        "fitted_on": "val",
        "fit_images": len(val_labels),
        "mirror": mirror,
        "knn_k": KNN_K,
        "bank_images": len(bank),
        "features": OOD_FEATURES,
    }
    return {"calibration": calibration, "ood": ood, "bank": bank, "logits": logits, "labels": labels}


def record_trust(folder: Path, fitted: dict) -> None:
    """Keep the temperature and rejection thresholds in the checkpoint's config.json and the feature bank
    beside it; each file replaced atomically, the bank first, so config.json never names a bank missing."""
    from safetensors.torch import save_file

    with atomic_path(folder / OOD_FEATURES) as tmp:
        save_file({"features": fitted["bank"].contiguous()}, str(tmp))
    meta = read_json(folder / CONFIG_NAME)
    kept = ("method", "temperature", "fitted_on", "fit_images")
    calibration = {k: v for k, v in fitted["calibration"].items() if k in kept}
    write_json(folder / CONFIG_NAME, {**meta, "calibration": calibration, "ood": fitted["ood"]})


def calibrate(checkpoint, batch_size: int = 256, device: str = "auto", keep: float = DEFAULT_KEEP) -> dict:
    """`vitkit calibrate`: fit the temperature and the rejection thresholds of a single-label checkpoint
    made before vitkit recorded them, on its run's validation split, and keep them in the checkpoint
    folder; returns the calibration report (measured on the run's reported split: test, else val) with
    "ood" and the folder. A run folder also gets reliability.png."""
    from ..errors import VitkitError
    from ..inference import load
    from .checkpoint import checkpoint_split

    clf = load(checkpoint, device, backend="torch", precision="fp32")
    if clf.folder is None or clf.meta.get("family") is None:
        raise VitkitError(f"{checkpoint}: vitkit calibrate takes a run folder or a vitkit checkpoint folder")
    if clf.multi_label:
        raise VitkitError(f"{checkpoint} is multi-label: its scores are per-label sigmoids, left uncalibrated")
    _, dataset, _, _ = checkpoint_split(clf, None, None, {})
    if dataset.val is None or not len(dataset.val):
        raise VitkitError(f"{checkpoint}: its data has no validation split to calibrate on")
    eval_split = "test" if dataset.test is not None and len(dataset.test) else "val"
    mirror = mirrors_for_scores((clf.meta.get("train_config") or {}).get("hflip", False))
    fitted = fit_trust(
        clf.model, dataset, eval_split, clf.input_transform.for_inference, clf.device, batch_size, keep, mirror=mirror
    )
    record_trust(clf.folder, fitted)
    run_dir = clf.folder.parent if clf.folder.name in (BEST, LAST) else clf.folder
    from ..viz.calibration import plot_reliability

    plot_reliability(fitted["logits"], fitted["labels"], fitted["calibration"]["temperature"],
                     f"{eval_split} split", run_dir / RELIABILITY_FIGURE)
    return {**fitted["calibration"], "ood": fitted["ood"], "checkpoint": str(clf.folder)}
