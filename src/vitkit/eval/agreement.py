"""How far a reduced-precision model (bf16, INT8) strays from its fp32 original: top-1 agreement and the
accuracy change on the same images. vitkit refuses a reduced-precision export below MIN_AGREEMENT, and
'--precision auto' falls back to fp32 for a checkpoint whose recorded bf16 agreement is below it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.loader import BatchLoader
from ..runtime import MIN_AGREEMENT as MIN_AGREEMENT

# A checkpoint folder's record of its bf16 agreement, written by `vitkit eval --precision bf16` and read
# by `--precision auto`.
BF16_RECORD = "agreement-bf16.json"


@torch.inference_mode()
def predicted_classes(run, loader: BatchLoader, normalize) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax class, label) of every image of a loader, on the CPU; `run` maps normalised images to logits."""
    predicted, labels = [], []
    for images, batch_labels in loader.batches():
        predicted.append(run(normalize(images)).argmax(dim=1).cpu())
        labels.append(batch_labels.cpu())
    return torch.cat(predicted), torch.cat(labels)


def agreement_report(
    reference: torch.Tensor, candidate: torch.Tensor, labels: torch.Tensor, precision: str, split: str
) -> dict:
    """Top-1 agreement of `candidate` predictions with the fp32 `reference` ones and both accuracies."""
    # exact counts over a Python int: a float32 mean rounds in the 8th digit, and these numbers are
    # compared with the run's reported metrics, which are exact fractions
    def share(matches: torch.Tensor) -> float:
        return int(matches.sum()) / len(labels)

    fp32_top1, top1 = share(reference == labels), share(candidate == labels)
    return {
        "precision": precision,
        "split": split,
        "images": len(labels),
        "top1_agreement": share(reference == candidate),
        "top1_fp32": fp32_top1,
        "top1": top1,
        "top1_delta": top1 - fp32_top1,
    }


def describe(report: dict) -> str:
    """One line for people: the agreement and the accuracy change, with the split it was measured on."""
    return (
        f"{report['precision']} agrees with fp32 on {report['top1_agreement']:.2%} of {report['images']} "
        f"{report['split']} images (top-1 {report['top1']:.4f} vs {report['top1_fp32']:.4f}, "
        f"{report['top1_delta']:+.4f})"
    )


def read_bf16_record(checkpoint_dir: Path) -> dict | None:
    """The bf16 agreement recorded in a checkpoint folder, or None when it was never measured."""
    path = checkpoint_dir / BF16_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record.get("top1_agreement"), float) else None
