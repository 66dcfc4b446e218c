"""Post-hoc scores of how much an image looks like the training data (higher: more in-distribution), the
threshold that keeps a share of the validation images, and how well a score separates in- from
out-of-distribution images (AUROC, FPR at 95% TPR).

- msp: the maximum softmax probability of the calibrated logits (Hendrycks & Gimpel, 2017);
- energy: logsumexp of the calibrated logits, the negative free energy (Liu et al., 2020);
- knn: minus the distance from the image's normalised penultimate features to its k-th nearest neighbour
  among a bounded sample of the training split's (Sun et al., 2022).

For a model trained with flips, each score reads the mean logits and features of the image and its mirror
(`trust.mirrors_for_scores`)."""

from __future__ import annotations

import torch

from ..errors import VitkitError

METHODS = ("msp", "energy", "knn")
FEATURE_METHODS = ("knn",)
# chosen by measurement (the OOD benchmark): energy separated unknown images best of the three on small
# models trained from scratch, near and far
DEFAULT_METHOD = "energy"
DEFAULT_KEEP = 0.95  # the share of in-distribution (validation) images a threshold keeps
KNN_K = 10  # neighbours, for a bank of up to MAX_BANK training images
MAX_BANK = 5000  # training images whose features a checkpoint keeps for knn (fp16: at most ~5 MB at 512 features)


def normalise(features: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(features.float(), dim=1)


def knn_score(features: torch.Tensor, bank: torch.Tensor, k: int = KNN_K, chunk: int = 1024) -> torch.Tensor:
    """Minus the distance from each normalised feature row to its k-th nearest row of `bank` (already
    normalised), in chunks so a large batch never makes a huge distance matrix."""
    bank = bank.float()
    k = min(k, len(bank))
    scores = []
    for part in normalise(features).split(chunk):
        distance = torch.cdist(part, bank)
        scores.append(-distance.topk(k, dim=1, largest=False).values[:, -1])
    return torch.cat(scores) if scores else torch.zeros(0)


def ood_scores(
    method: str, logits: torch.Tensor, temperature: float = 1.0, features=None, bank=None, k: int = KNN_K
) -> torch.Tensor:
    """Each image's score under `method` (higher: more like the training data); logits are divided by the
    calibration temperature first, so every backend scores the same calibrated logits."""
    logits = logits.float() / temperature
    if method == "msp":
        return logits.softmax(dim=1).max(dim=1).values
    if method == "energy":
        return logits.logsumexp(dim=1)
    if method == "knn":
        if features is None or bank is None:
            raise ValueError("knn scores need the images' features and the training features")
        return knn_score(features, bank, k)
    raise VitkitError(f"unknown OOD method {method!r}: use one of {', '.join(METHODS)}")


def keep_threshold(scores: torch.Tensor, keep: float = DEFAULT_KEEP) -> float:
    """The score at or above which `keep` of these (in-distribution, validation) images lie."""
    if not 0 < keep < 1:
        raise VitkitError(f"keep {keep}: the share of in-distribution images to keep must be in (0, 1)")
    if len(scores) == 0:
        raise VitkitError("no validation images to set the rejection threshold on")
    ordered = scores.double().sort().values
    # the largest threshold t with at least `keep` of the scores >= t
    index = int(len(ordered) - torch.tensor(keep * len(ordered)).ceil().item())
    return float(ordered[max(index, 0)])


def auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """The probability that an in-distribution image scores above an out-of-distribution one (ties count
    half): the area under the ROC curve with in-distribution as the positive class."""
    scores = torch.cat([in_scores, out_scores]).double()
    ranks = _average_ranks(scores)
    n_in, n_out = len(in_scores), len(out_scores)
    return float((ranks[:n_in].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out))


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks, ties given their mean rank."""
    order = values.argsort()
    ordered = values[order]
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(1, len(values) + 1, dtype=values.dtype)
    unique, inverse = torch.unique(ordered, return_inverse=True)
    mean_rank = torch.zeros(len(unique), dtype=values.dtype).index_add_(0, inverse, ranks[order])
    counts = torch.bincount(inverse, minlength=len(unique)).to(values.dtype)
    ranks[order] = (mean_rank / counts)[inverse]
    return ranks


def fpr_at_tpr(in_scores: torch.Tensor, out_scores: torch.Tensor, tpr: float = 0.95) -> float:
    """The share of out-of-distribution images kept at the threshold that keeps `tpr` of the
    in-distribution ones."""
    threshold = keep_threshold(in_scores, tpr)
    return float((out_scores >= threshold).double().mean())


def separation(in_scores: torch.Tensor, out_scores: torch.Tensor) -> dict:
    return {"auroc": auroc(in_scores, out_scores), "fpr95": fpr_at_tpr(in_scores, out_scores)}
