"""How far a reduced-precision model (bf16, INT8) strays from its fp32 original: top-1 agreement (label
sets for multi-label models) and the accuracy change on the same images. vitkit refuses a reduced-precision
export below MIN_AGREEMENT, and '--precision auto' runs bf16 only for a checkpoint whose recorded bf16
agreement on held-out images reaches it: `vitkit train` records it at the end of a run on hardware where
auto would pick bf16, `vitkit eval --precision bf16` on any checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.loader import BatchLoader
from ..fileio import write_json
from ..runfiles import BF16_AGREEMENT
from ..runtime import MIN_AGREEMENT as MIN_AGREEMENT
from ..runtime import Bf16Autocast
from .metrics import MetricAccumulator

# The splits whose images the weights were not trained on: only a record measured on one of them counts.
HELD_OUT_SPLITS = ("val", "test")


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
    counts = [int(m.sum()) for m in (reference == candidate, reference == labels, candidate == labels)]
    return counts_report(precision, split, len(labels), *counts)


def counts_report(
    precision: str, split: str, images: int, same: float, right_fp32: float, right: float, label_sets: bool = False
) -> dict:
    """The agreement report from counts of images: agreeing with fp32, and right in fp32 and in `precision`
    (top-1 classes, or whole label sets). Shares are exact fractions of the counts: a float32 mean rounds
    in the 8th digit, and these numbers are compared with the run's reported metrics."""
    def share(count: float) -> float:
        return count / max(images, 1)

    agreement, fp32, reduced = share(same), share(right_fp32), share(right)
    report = {"precision": precision, "split": split, "images": images}
    if label_sets:
        return {
            **report,
            "measure": "label sets",
            "agreement": agreement,
            "exact_match_fp32": fp32,
            "exact_match": reduced,
            "exact_match_delta": reduced - fp32,
        }
    return {
        **report,
        "measure": "top-1",
        "agreement": agreement,
        "top1_agreement": agreement,
        "top1_fp32": fp32,
        "top1": reduced,
        "top1_delta": reduced - fp32,
    }


@torch.inference_mode()
def bf16_agreement(
    model: nn.Module,
    loader: BatchLoader,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    split: str,
    thresholds: list[float] | None = None,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    fp32_metrics: MetricAccumulator | None = None,
) -> dict:
    """bf16's agreement with fp32 over every image of a loader, each batch read once and run both ways:
    top-1 classes, or for a multi-label model (`thresholds` given) whole label sets at its thresholds.
    `all_reduce_sum` adds up the counts of every rank's shard. `fp32_metrics` (single-label) also takes
    the fp32 logits, so a final evaluation and its agreement share one pass over the data."""
    model.eval()
    bf16 = Bf16Autocast(model, loader.device)
    counts = torch.zeros(4, dtype=torch.float64, device=loader.device)  # images, agreeing, fp32 right, bf16 right
    for images, labels in loader.batches():
        x = normalize(images)
        reference, candidate = model(x).float(), bf16(x)
        if fp32_metrics is not None:
            fp32_metrics.update(reference, labels, F.cross_entropy(reference, labels, reduction="sum"))
        if thresholds is None:
            reference, candidate = reference.argmax(1), candidate.argmax(1)
            same, right_fp32, right_bf16 = reference == candidate, reference == labels, candidate == labels
        else:
            cut = torch.tensor(thresholds, device=x.device)
            reference, candidate, truth = reference.sigmoid() >= cut, candidate.sigmoid() >= cut, labels >= 0.5
            same = (reference == candidate).all(1)
            right_fp32, right_bf16 = (reference == truth).all(1), (candidate == truth).all(1)
        sums = [torch.tensor(len(labels))] + [m.sum() for m in (same, right_fp32, right_bf16)]
        counts += torch.stack(sums).to(counts)
    if all_reduce_sum is not None:
        counts = all_reduce_sum(counts)
        if fp32_metrics is not None:
            fp32_metrics.load_tensor(all_reduce_sum(fp32_metrics.as_tensor()))
    images, same, right_fp32, right_bf16 = counts.tolist()
    return counts_report("bf16", split, int(images), same, right_fp32, right_bf16, label_sets=thresholds is not None)


def record_agreement(record: dict) -> float:
    """The share of images on which a reduced precision agrees with fp32 (records written before label
    sets were measured hold only top1_agreement)."""
    return record.get("agreement", record.get("top1_agreement"))


def describe(report: dict) -> str:
    """One line for people: the agreement and the accuracy change, with the split it was measured on."""
    agreement = record_agreement(report)
    if report.get("measure") == "label sets":
        return (
            f"{report['precision']} gives the same label set as fp32 for {agreement:.2%} of {report['images']} "
            f"{report['split']} images (exact match {report['exact_match']:.4f} vs {report['exact_match_fp32']:.4f}, "
            f"{report['exact_match_delta']:+.4f})"
        )
    return (
        f"{report['precision']} agrees with fp32 on {agreement:.2%} of {report['images']} "
        f"{report['split']} images (top-1 {report['top1']:.4f} vs {report['top1_fp32']:.4f}, "
        f"{report['top1_delta']:+.4f})"
    )


def read_bf16_record(checkpoint_dir: Path) -> dict | None:
    """The bf16 agreement recorded in a checkpoint folder, or None when it was never measured (or the
    record cannot be read: the guard then treats it as unmeasured)."""
    path = checkpoint_dir / BF16_AGREEMENT
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record_agreement(record), float) else None


def bf16_guard(checkpoint_dir: Path, checkpoint: str) -> tuple[bool, str]:
    """(whether '--precision auto' may run bf16 for this checkpoint, why): only with a record measured on
    held-out images (validation or test) at MIN_AGREEMENT or above."""
    record = read_bf16_record(checkpoint_dir)
    measure = f"vitkit eval {checkpoint} --precision bf16 measures it"
    if record is None:
        return False, f"its bf16 agreement with fp32 is not measured ({measure})"
    if record.get("split") not in HELD_OUT_SPLITS:
        split = record.get("split")
        return False, f"its bf16 agreement was measured on the {split} split, not held-out images ({measure})"
    if record_agreement(record) < MIN_AGREEMENT:
        return False, f"{describe(record)}, below {MIN_AGREEMENT:.1%}"
    return True, describe(record)


def record_bf16_agreement(folder: Path | None, record: dict, notice: Callable[[str], None]) -> bool:
    """Keep a bf16 agreement in a checkpoint folder for '--precision auto' when it was measured on held-out
    images (a training-split measure is reported, never recorded: it would vouch for images the weights
    were fitted to); `notice` hears why not otherwise. Returns whether it was recorded."""
    if folder is None:
        return False
    if record["split"] not in HELD_OUT_SPLITS:
        notice(
            f"note: bf16's agreement on the {record['split']} split is not recorded for --precision auto "
            "(held-out splits only)"
        )
        return False
    try:
        write_json(folder / BF16_AGREEMENT, record)
    except OSError as e:
        notice(f"note: could not record the bf16 agreement in {folder} ({e.strerror})")
        return False
    return True
