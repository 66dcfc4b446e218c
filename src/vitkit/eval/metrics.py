"""Classification metrics from a confusion matrix and top-k counts."""

from __future__ import annotations

import torch


class MetricAccumulator:
    """Sums over batches (and, in distributed runs, over ranks): loss, top-k hits, confusion matrix.

    The sums stay tensors on the batches' device, so updating never waits for the device; reading a
    total (`loss_sum`, `count`, `compute()`) is the one synchronisation point."""

    def __init__(self, num_classes: int, topk: int = 5, device: torch.device | str = "cpu"):
        self.num_classes, self.topk = num_classes, topk
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, count, top-k hits
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor, loss_sum: torch.Tensor | float) -> None:
        k = min(self.topk, logits.shape[1])
        hits = (logits.topk(k, dim=1).indices == labels.unsqueeze(1)).any(dim=1).sum()
        self.confusion += torch.bincount(
            labels * self.num_classes + logits.argmax(dim=1), minlength=self.num_classes**2
        )
        # in-place adds on the device: no host round trip, no new host-made tensors per batch
        self.sums[0] += loss_sum.detach() if isinstance(loss_sum, torch.Tensor) else loss_sum
        self.sums[1] += labels.shape[0]
        self.sums[2] += hits

    @property
    def loss_sum(self) -> float:
        return float(self.sums[0])

    @property
    def count(self) -> int:
        return int(self.sums[1])

    @property
    def correct(self) -> int:
        return int(self.confusion.view(self.num_classes, -1).diag().sum())

    def as_tensor(self) -> torch.Tensor:
        return torch.cat([self.sums, self.confusion.double()])

    def load_tensor(self, t: torch.Tensor) -> None:
        self.sums = t[:3].clone()
        self.confusion = t[3:].round().long()

    def compute(self, class_names: list[str] | None = None) -> dict:
        loss_sum, _, hits = self.sums.tolist()
        confusion = self.confusion.cpu().view(self.num_classes, self.num_classes)
        return classification_report(confusion, int(round(hits)), loss_sum, class_names, self.topk)


def classification_report(
    confusion: torch.Tensor,
    topk_hits: int | None = None,
    loss_sum: float | None = None,
    class_names: list[str] | None = None,
    topk: int = 5,
) -> dict:
    """top-1/top-k (top-k only with more than k classes: with k or fewer it is 1 by definition),
    precision/recall/F1 (macro and weighted), per-class scores and the matrix.
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
    if topk_hits is not None and cm.shape[0] > topk:
        result[f"top{topk}"] = topk_hits / max(total, 1)
    if loss_sum is not None:
        result["loss"] = loss_sum / max(total, 1)
    return result
