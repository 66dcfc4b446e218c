"""Temperature scaling and the measures of calibration: a single-label classifier's logits divided by one
temperature T, fitted on the validation split by minimising the negative log-likelihood (Guo et al.,
2017), leave its top-1 unchanged and make its scores mean what they say. ECE (15 equal-width bins), NLL
and the Brier score say how well they do, before and after."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ECE_BINS = 15
# a temperature beyond these bounds means the fit failed (e.g. a constant model), not a calibrated one
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> float:
    """The T minimising the mean NLL of softmax(logits / T) on (logits, labels): LBFGS on log T, which
    keeps T positive; clamped to [MIN_TEMPERATURE, MAX_TEMPERATURE]."""
    # clones: tensors made under inference_mode cannot take part in autograd
    logits, labels = logits.detach().double().cpu().clone(), labels.detach().long().cpu().clone()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature):
        return 1.0
    return min(max(temperature, MIN_TEMPERATURE), MAX_TEMPERATURE)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE: the mean |accuracy - confidence| over `bins` equal-width confidence bins, weighted by their
    share of the images (confidence: the top class's probability)."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    # bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 joins the first
    index = (confidence.double() * bins).ceil().long().clamp(1, bins) - 1
    gap = torch.bincount(index, weights=confidence.double() - correct, minlength=bins)
    return float(gap.abs().sum() / max(len(labels), 1))


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> dict:
    """Per confidence bin: its images, mean confidence and accuracy (None for an empty bin)."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    index = (confidence.double() * bins).ceil().long().clamp(1, bins) - 1
    count = torch.bincount(index, minlength=bins)
    conf_sum = torch.bincount(index, weights=confidence.double(), minlength=bins)
    hit_sum = torch.bincount(index, weights=correct, minlength=bins)
    mean = lambda sums: [float(s / c) if c else None for s, c in zip(sums.tolist(), count.tolist())]  # noqa: E731
    return {"count": count.tolist(), "confidence": mean(conf_sum), "accuracy": mean(hit_sum)}


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean over images of the squared distance between the probabilities and the one-hot label,
    summed over classes (0 is perfect, 2 the worst)."""
    one_hot = F.one_hot(labels, probs.shape[1]).double()
    return float(((probs.double() - one_hot) ** 2).sum(dim=1).mean())


def calibration_measures(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> dict:
    """ECE, NLL and Brier score of softmax(logits / temperature)."""
    logits, labels = logits.double().cpu(), labels.long().cpu()
    probs = (logits / temperature).softmax(dim=1)
    return {
        "ece": expected_calibration_error(probs, labels),
        "nll": float(F.cross_entropy(logits / temperature, labels)),
        "brier": brier_score(probs, labels),
    }


def calibration_report(
    val_logits: torch.Tensor,
    val_labels: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    split: str,
) -> dict:
    """The temperature fitted on the validation split and the measures on `split` (logits, labels) before
    (T = 1) and after, as results.json and `vitkit calibrate` report them."""
    temperature = fit_temperature(val_logits, val_labels)
    return {
        "method": "temperature",
        "temperature": temperature,
        "fitted_on": "val",
        "fit_images": len(val_labels),
        "split": split,
        "images": len(labels),
        "bins": ECE_BINS,
        "before": calibration_measures(logits, labels),
        "after": calibration_measures(logits, labels, temperature),
    }


def describe_calibration(report: dict) -> str:
    """One line for people: the temperature and ECE/NLL/Brier before -> after."""
    before, after = report["before"], report["after"]
    return (
        f"calibration: temperature {report['temperature']:.3f} (fitted on {report['fit_images']} validation "
        f"images); on the {report['split']} split ECE {before['ece']:.4f} -> {after['ece']:.4f}, "
        f"NLL {before['nll']:.4f} -> {after['nll']:.4f}, Brier {before['brier']:.4f} -> {after['brier']:.4f}"
    )
