"""Metrics agree with scikit-learn on the same predictions."""

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

from vitkit.eval.metrics import MetricAccumulator


def test_report_matches_scikit_learn():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(500, 7))).float()
    labels = torch.from_numpy(rng.integers(0, 7, 500))
    logits[labels == 2, 2] += 2.0  # some signal
    logits[:, 6] -= 10  # class 6 is never predicted: precision 0 by convention
    acc = MetricAccumulator(7)
    for chunk in range(0, 500, 64):
        acc.update(logits[chunk : chunk + 64], labels[chunk : chunk + 64], 0.0)
    report = acc.compute([f"c{i}" for i in range(7)])
    pred = logits.argmax(1).numpy()
    y = labels.numpy()
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
        assert np.isclose(report[f"precision_{avg}"], p) and np.isclose(report[f"recall_{avg}"], r)
        assert np.isclose(report[f"f1_{avg}"], f)
    assert np.isclose(report["top1"], (pred == y).mean())
    assert np.isclose(report["top5"], top_k_accuracy_score(y, logits.numpy(), k=5, labels=range(7)))
    assert report["confusion_matrix"] == confusion_matrix(y, pred, labels=range(7)).tolist()
    assert report["per_class"]["c6"]["precision"] == 0.0
