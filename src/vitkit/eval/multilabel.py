"""Multi-label metrics from every image's label scores (sigmoid probabilities) and 0/1 targets.

Average precision follows scikit-learn's `average_precision_score` (the step-wise area under the
precision-recall curve, tied scores taken together); written with torch here because the whole report,
thresholds included, comes from one sort per label and inference must not need scikit-learn.
Macro mAP averages the labels that have positives in the split (a label without any has no AP);
micro mAP is the AP of all (image, label) pairs pooled.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.augment import BatchAugment
from ..data.loader import BatchLoader
from .loop import eval_logits
from .metrics import MetricAccumulator

DEFAULT_THRESHOLD = 0.5
# validation positives a label needs for its own tuned threshold to weigh as much as the shared one
SHRINK_POSITIVES = 20.0


class LossAccumulator(MetricAccumulator):
    """The training loss of multi-label batches, summed on the device as `MetricAccumulator` sums it for
    single-label ones (top-k and the confusion matrix mean nothing for label sets); reported as a mean
    per label, the unit of the validation loss (`multilabel_report`)."""

    def __init__(self, num_labels: int, device: torch.device | str = "cpu"):
        super().__init__(1, device=device)
        self.num_labels = num_labels

    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss_sum: torch.Tensor) -> None:
        self.sums[0] += loss_sum.detach()
        self.sums[1] += targets.shape[0]

    def compute(self) -> dict:
        return {"loss": self.loss_sum / max(self.count * self.num_labels, 1)}


def _ranked(scores: torch.Tensor, targets: torch.Tensor):
    """(distinct scores descending, true positives and predicted positives at each) of one label."""
    order = scores.double().argsort(descending=True, stable=True)
    ranked, hits = scores.double()[order], targets.double()[order]
    last_of_tie = torch.ones_like(ranked, dtype=torch.bool)
    last_of_tie[:-1] = ranked[:-1] != ranked[1:]
    tp = hits.cumsum(0)[last_of_tie]
    predicted = torch.arange(1, len(ranked) + 1, dtype=torch.float64)[last_of_tie]
    return ranked[last_of_tie], tp, predicted


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """AP of one label: sum over thresholds of (recall gained) x precision; NaN without positives."""
    positives = float(targets.sum())
    if positives == 0 or len(scores) == 0:
        return float("nan")
    _, tp, predicted = _ranked(scores, targets)
    recall_gain = torch.diff(tp, prepend=tp.new_zeros(1)) / positives
    return float((recall_gain * tp / predicted).sum())


def precision_recall_curve(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(precision, recall) at every distinct threshold, highest threshold first."""
    _, tp, predicted = _ranked(scores, targets)
    return tp / predicted, tp / max(float(targets.sum()), 1.0)


def best_f1_threshold(scores: torch.Tensor, targets: torch.Tensor, default: float = DEFAULT_THRESHOLD) -> float:
    """The threshold (predict score >= t) with the highest F1 over these scores: halfway between the lowest
    score kept and the next lower one, so that scores seen here keep their decision and new ones near the
    edge fall either side evenly. `default` without positives."""
    positives = float(targets.sum())
    if positives == 0:
        return default
    distinct, tp, predicted = _ranked(scores, targets)
    f1 = 2 * tp / (predicted + positives)
    best = int(f1.argmax())
    below = float(distinct[best + 1]) if best + 1 < len(distinct) else 0.0
    return (float(distinct[best]) + below) / 2


def tune_thresholds(
    scores: torch.Tensor, targets: torch.Tensor, shrink: float = SHRINK_POSITIVES, default: float = DEFAULT_THRESHOLD
) -> torch.Tensor:
    """Per label, a threshold tuned on these images (the validation split) that does not overfit rare labels:
    the label's own best-F1 threshold shrunk toward the one best-F1 threshold of all (image, label) pairs
    pooled (micro F1), weighted by the label's positives n against `shrink`: (n t_label + shrink t_all) /
    (n + shrink). A label with one positive here keeps little of its own threshold; shrink=0 is each
    label's own best (which gives rare labels thresholds that fit a single image), shrink=inf one shared
    threshold. The default shrink is a compromise on held-out images: a larger one raised micro F1 and
    lowered macro F1 (rare labels), a smaller one the reverse."""
    pooled = best_f1_threshold(scores.flatten(), targets.flatten(), default)
    thresholds = torch.full((scores.shape[1],), pooled, dtype=torch.float64)
    if shrink == float("inf"):
        return thresholds.float()
    for k in range(scores.shape[1]):
        positives = float(targets[:, k].sum())
        if positives == 0:
            continue
        own = best_f1_threshold(scores[:, k], targets[:, k], default)
        thresholds[k] = (positives * own + shrink * pooled) / (positives + shrink)
    return thresholds.float()


def label_counts(scores: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor | float):
    """(true positives, false positives, false negatives) per label at `thresholds`."""
    predicted = scores >= torch.as_tensor(thresholds, dtype=scores.dtype)
    truth = targets > 0.5
    tp = (predicted & truth).sum(0).double()
    return tp, (predicted & ~truth).sum(0).double(), (~predicted & truth).sum(0).double()


def f1_scores(scores: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor | float) -> dict:
    """Macro and micro F1 at `thresholds` (scikit-learn's f1_score, zero_division=0)."""
    tp, fp, fn = label_counts(scores, targets, thresholds)
    per_label = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), 0.0)
    total = 2 * tp.sum() + fp.sum() + fn.sum()
    return {"f1_macro": float(per_label.mean()), "f1_micro": float(2 * tp.sum() / total) if total > 0 else 0.0}


def multilabel_report(
    scores: torch.Tensor,
    targets: torch.Tensor,
    class_names: list[str] | None = None,
    thresholds: torch.Tensor | list[float] | None = None,
    loss_sum: float | None = None,
) -> dict:
    """mAP (macro, micro), F1 at 0.5 and at the per-label `thresholds` (tuned on the validation split;
    by default 0.5), the mean number of labels predicted per image at each beside the true mean, and per
    label: AP, precision, recall, F1 at its threshold, and its positives. `loss_sum`: the summed binary
    cross-entropy, reported as the mean per label."""
    scores, targets = scores.float().cpu(), targets.float().cpu()
    names = class_names or [str(i) for i in range(scores.shape[1])]
    tuned = torch.as_tensor(thresholds if thresholds is not None else [DEFAULT_THRESHOLD] * len(names)).float()
    ap = [average_precision(scores[:, k], targets[:, k]) for k in range(len(names))]
    scored = [a for a in ap if a == a]
    tp, fp, fn = label_counts(scores, targets, tuned)
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), 0.0)
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), 0.0)
    f1 = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), 0.0)
    at_half = f1_scores(scores, targets, DEFAULT_THRESHOLD)
    at_tuned = f1_scores(scores, targets, tuned)
    result = {
        "count": len(scores),
        "map_macro": sum(scored) / len(scored) if scored else float("nan"),
        "map_micro": average_precision(scores.flatten(), targets.flatten()),
        "f1_macro@0.5": at_half["f1_macro"],
        "f1_micro@0.5": at_half["f1_micro"],
        "f1_macro": at_tuned["f1_macro"],
        "f1_micro": at_tuned["f1_micro"],
        "mean_true_labels": float(targets.sum(1).mean()) if len(targets) else float("nan"),
        "mean_predicted_labels": float((scores >= tuned).sum(1).double().mean()) if len(scores) else float("nan"),
        "mean_predicted_labels@0.5": float((scores >= DEFAULT_THRESHOLD).sum(1).double().mean())
        if len(scores)
        else float("nan"),
        "labels_without_positives": [n for n, a in zip(names, ap) if a != a],
        "per_label": {
            n: {
                "ap": None if a != a else a,
                "threshold": t,
                "precision": p,
                "recall": r,
                "f1": f,
                "support": int(s),
            }
            for n, a, t, p, r, f, s in zip(
                names, ap, tuned.tolist(), precision.tolist(), recall.tolist(), f1.tolist(), targets.sum(0).tolist()
            )
        },
        "thresholds": tuned.tolist(),
        "class_names": names,
    }
    if loss_sum is not None:
        result["loss"] = loss_sum / max(scores.numel(), 1)
    return result


def label_table(report: dict) -> str:
    """The per-label precision/recall table of a report, as text, most frequent labels first."""
    rows = sorted(report["per_label"].items(), key=lambda item: -item[1]["support"])
    width = max(len("label"), *(len(n) for n, _ in rows))
    lines = [f"{'label':<{width}}  {'AP':>6}  {'thresh':>6}  {'prec':>6}  {'recall':>6}  {'F1':>6}  {'support':>7}"]
    for name, m in rows:
        ap = "     -" if m["ap"] is None else f"{m['ap']:6.3f}"
        lines.append(
            f"{name:<{width}}  {ap}  {m['threshold']:6.3f}  {m['precision']:6.3f}  {m['recall']:6.3f}  "
            f"{m['f1']:6.3f}  {m['support']:>7}"
        )
    return "\n".join(lines)


def write_label_table(path, report: dict) -> None:
    """The per-label table of a report as CSV (per_label.csv of a run folder), written atomically."""
    import csv
    import io

    from ..fileio import atomic_path

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["label", "ap", "threshold", "precision", "recall", "f1", "support"])
    for name, m in report["per_label"].items():
        writer.writerow([name, m["ap"], m["threshold"], m["precision"], m["recall"], m["f1"], m["support"]])
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


@torch.inference_mode()
def multilabel_outputs(
    model: nn.Module, loader: BatchLoader, augment: BatchAugment, flip_tta: bool = False
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(sigmoid scores, 0/1 targets, summed binary cross-entropy over images and labels) of every image of
    a loader, in its order, on the CPU; fp32 as in `evaluate_loader`. The loss is unweighted whatever
    training used."""
    model.eval()
    scores, targets, loss_sum = [], [], 0.0
    for images, labels in loader.batches():
        logits = eval_logits(model, augment.for_inference(images), flip_tta)
        loss_sum += float(F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none").sum())
        scores.append(logits.sigmoid().cpu())
        targets.append(labels.float().cpu())
    return torch.cat(scores), torch.cat(targets), loss_sum


def evaluate_multilabel(
    model: nn.Module,
    loader: BatchLoader,
    augment: BatchAugment,
    class_names: list[str],
    thresholds: torch.Tensor | list[float] | None = None,
    flip_tta: bool = False,
    tune: bool = False,
    gather=None,
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """(report, scores, targets) of a loader's images: the report at `thresholds`, or with `tune` at
    thresholds tuned on these images (the validation split); the report's "thresholds" are those used.
    `gather` pools every rank's (scores, targets, loss sum) when each evaluates its shard of the loader."""
    scores, targets, loss_sum = multilabel_outputs(model, loader, augment, flip_tta)
    if gather is not None:
        scores, targets, loss_sum = gather(scores, targets, loss_sum)
    if tune:
        thresholds = tune_thresholds(scores, targets)
    return multilabel_report(scores, targets, class_names, thresholds, loss_sum), scores, targets
