"""Classification metrics from a confusion matrix and top-k counts."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MetricAccumulator:
    """Sums over batches (and, in distributed runs, over ranks): loss, top-k hits, confusion matrix."""

    num_classes: int
    topk: int = 5
    loss_sum: float = 0.0
    count: int = 0
    topk_hits: int = 0
    confusion: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)

    def update(self, logits: torch.Tensor, labels: torch.Tensor, loss_sum: float) -> None:
        pred = logits.argmax(dim=1)
        k = min(self.topk, logits.shape[1])
        self.topk_hits += int((logits.topk(k, dim=1).indices == labels.unsqueeze(1)).any(dim=1).sum())
        self.confusion += torch.bincount(
            labels.cpu() * self.num_classes + pred.cpu(), minlength=self.num_classes**2
        ).view(self.num_classes, self.num_classes)
        self.loss_sum += float(loss_sum)
        self.count += labels.shape[0]

    def as_tensor(self) -> torch.Tensor:
        return torch.cat(
            [
                torch.tensor([self.loss_sum, self.count, self.topk_hits], dtype=torch.float64),
                self.confusion.flatten().double(),
            ]
        )

    def load_tensor(self, t: torch.Tensor) -> None:
        self.loss_sum, self.count, self.topk_hits = float(t[0]), int(t[1]), int(t[2])
        self.confusion = t[3:].round().long().view(self.num_classes, self.num_classes)

    def compute(self, class_names: list[str] | None = None) -> dict:
        return classification_report(self.confusion, self.topk_hits, self.loss_sum, class_names, self.topk)


def classification_report(
    confusion: torch.Tensor,
    topk_hits: int | None = None,
    loss_sum: float | None = None,
    class_names: list[str] | None = None,
    topk: int = 5,
) -> dict:
    """top-1/top-k, precision/recall/F1 (macro and weighted), per-class scores and the matrix.
    Rows of `confusion` are true classes, columns predictions. Classes never predicted have precision 0
    (scikit-learn's zero_division=0 convention)."""
    cm = confusion.double()
    total = cm.sum().item()
    tp = cm.diag()
    support = cm.sum(dim=1)
    predicted = cm.sum(dim=0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, tp / support.clamp(min=1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    weights = support / max(total, 1)
    names = class_names or [str(i) for i in range(cm.shape[0])]
    result = {
        "count": int(total),
        "top1": tp.sum().item() / max(total, 1),
        "precision_macro": precision.mean().item(),
        "recall_macro": recall.mean().item(),
        "f1_macro": f1.mean().item(),
        "precision_weighted": (precision * weights).sum().item(),
        "recall_weighted": (recall * weights).sum().item(),
        "f1_weighted": (f1 * weights).sum().item(),
        "per_class": {
            n: {"precision": p, "recall": r, "f1": f, "support": int(s)}
            for n, p, r, f, s in zip(names, precision.tolist(), recall.tolist(), f1.tolist(), support.tolist())
        },
        "confusion_matrix": confusion.long().tolist(),
        "class_names": names,
    }
    if topk_hits is not None:
        result[f"top{topk}"] = topk_hits / max(total, 1)
    if loss_sum is not None:
        result["loss"] = loss_sum / max(total, 1)
    return result
