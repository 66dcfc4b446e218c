"""Labels: how the images spread over the classes (or, multi-label, the labels and which go together), and
which labels are likely wrong.

Likely label errors are found by confident learning (Northcutt et al., 2021, as `cleanlab` implements
it) on out-of-fold predicted probabilities: the images are split into k stratified folds, a small fast
network (FastNet, the cifar-fast recipe's, at low resolution) is trained on all folds but one under the
time budget and predicts the held-out fold, so every image is judged by a model that never saw its label.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from ..data.augment import shift_reflected
from ..errors import VitkitError
from ..runtime import autocast, use_bf16

MIN_VAL_IMAGES = 5  # a class (or a label's positives) with fewer in validation is judged on noise
MIN_TRAIN_SECONDS = 20  # less time than this for the k-fold training is no judgement worth giving
MIN_STEPS = 30  # nor are fewer optimizer steps a fold (or, for small data, MIN_EPOCHS)
MIN_EPOCHS = 5
# A small dataset is not trained longer, however long the budget: further epochs fit the few mislabelled
# images of the other folds, and confident learning then misses them.
MAX_EPOCHS = 40
BATCH = 256
BF16_FROM_IMAGES = 10_000


def balance(entries, class_names: list[str], multi_label: bool, val_split: float, splits_given: bool) -> dict:
    """Images per class and split; the classes (multi-label: labels' positives) too few for validation;
    multi-label: the most frequent label pairs."""
    counts: dict[str, Counter] = {}
    for entry in entries:
        labels = entry.label if multi_label else (entry.label,)
        counts.setdefault(entry.split, Counter()).update(labels)
    table = [
        {"label": name, **{split: counts[split].get(i, 0) for split in counts}} for i, name in enumerate(class_names)
    ]
    too_few = []
    for i, name in enumerate(class_names):
        if splits_given and "val" in counts:
            in_val = counts["val"].get(i, 0)
            why = f"{in_val} in the val split"
        else:
            in_val = round(counts["train"].get(i, 0) * val_split)
            why = (
                f"{counts['train'].get(i, 0)} in train: about {in_val} held out for validation "
                f"at --val-split {val_split:g}"
            )
        if in_val < MIN_VAL_IMAGES:
            what = "positives" if multi_label else "images"
            too_few.append({"label": name, "val": in_val, "detail": f"{why}; under {MIN_VAL_IMAGES} {what}"})
    sizes = [sum(c.get(i, 0) for c in counts.values()) for i in range(len(class_names))]
    report = {
        "counts": table,
        "too_few_for_validation": too_few,
        "largest_to_smallest": (max(sizes) / max(min(sizes), 1)) if sizes else 0.0,
    }
    if multi_label:
        pairs = Counter()
        per_image = Counter()
        for entry in entries:
            per_image[len(entry.label)] += 1
            for a in range(len(entry.label)):
                for b in range(a + 1, len(entry.label)):
                    pairs[(entry.label[a], entry.label[b])] += 1
        report["labels_per_image"] = {str(k): v for k, v in sorted(per_image.items())}
        report["co_occurrence"] = [
            {
                "labels": [class_names[a], class_names[b]],
                "images": n,
                "share_of_rarer": n / max(min(sizes[a], sizes[b]), 1),
            }
            for (a, b), n in pairs.most_common(20)
        ]
    return report


def _stratified_folds(keys: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's fold (0..folds-1), every class spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(keys), np.int64)
    offset = 0
    for key in np.unique(keys):
        members = rng.permutation(np.flatnonzero(keys == key))
        fold[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)
    return fold


def _augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """A random mirror and a random shift of up to `pad` pixels (reflect padding), each image its own."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return shift_reflected(x, torch.randint(-pad, pad + 1, (len(x), 2), generator=gen), pad)


def _new_model(num_classes: int, side: int, sample: torch.Tensor) -> torch.nn.Module:
    from ..models import create_model

    model = create_model("fastnet_cifar", num_classes=num_classes, image_size=side, widths=(32, 64, 128))
    model.init_whitening(sample)
    return model.to(memory_format=torch.channels_last)


def _train_fold(
    model, images, targets, seconds: float, max_steps: int, multi_label: bool, bf16: bool, seed: int
) -> int:
    """Train for `seconds` or `max_steps`, whichever ends first; the learning rate follows the progress
    through both (warmup over the first tenth, then a linear decay to 0), so a machine slower than
    measured shortens the run instead of overrunning the budget. Returns the steps taken. No label
    smoothing: confident learning reads the probabilities' margins, which smoothing compresses."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    peak = 0.2
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=peak,
        momentum=0.9,
        nesterov=True,
    )
    gen = torch.Generator().manual_seed(seed)
    model.train()
    order = torch.randperm(len(images), generator=gen)
    cursor = step = 0
    start = time.perf_counter()
    while True:
        progress = max(step / max_steps, (time.perf_counter() - start) / seconds)
        if progress >= 1:
            return step
        for group in opt.param_groups:
            group["lr"] = peak * min((progress + 0.01) / 0.1, (1 - progress) / 0.9)
        if cursor + BATCH > len(order):
            order, cursor = torch.randperm(len(images), generator=gen), 0
        index = order[cursor : cursor + BATCH]
        cursor += BATCH
        x = _augment(images[index], gen).contiguous(memory_format=torch.channels_last)
        with autocast(torch.device("cpu"), bf16):
            logits = model(x).float()
        if multi_label:
            loss = F.binary_cross_entropy_with_logits(logits, targets[index])
        else:
            loss = F.cross_entropy(logits, targets[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1


@torch.no_grad()
def _predict(model, images, multi_label: bool, bf16: bool) -> np.ndarray:
    model.eval()
    out = []
    for chunk in images.split(512):
        chunk = chunk.contiguous(memory_format=torch.channels_last)
        with autocast(torch.device("cpu"), bf16):
            logits = (model(chunk).float() + model(chunk.flip(3)).float()) / 2
        out.append(torch.sigmoid(logits) if multi_label else logits.softmax(1))
    return torch.cat(out).numpy()


def out_of_fold_probabilities(
    pixels: np.ndarray,
    labels: list,
    num_classes: int,
    multi_label: bool,
    seconds: float,
    folds: int = 3,
    seed: int = 0,
    progress=None,
) -> tuple[np.ndarray | None, dict]:
    """(N, K) probabilities of each image from a model trained on the other folds, and how they were made
    (None and why, when `seconds` allows too few steps). `pixels`: (N, S, S, 3) uint8; the training shares
    `seconds` equally between the folds."""
    began = time.perf_counter()
    torch.manual_seed(seed)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)
    mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True).clamp(min=1e-3)
    x = (x - mean) / std
    if multi_label:
        targets = torch.zeros(len(labels), num_classes)
        for i, label in enumerate(labels):
            targets[i, list(label)] = 1.0
        keys = np.array([min(label, default=-1) for label in labels])
    else:
        targets = torch.tensor(labels, dtype=torch.long)
        keys = np.array(labels)
    fold_of = _stratified_folds(keys, folds, seed)
    # bf16 kernels cost seconds of set-up in their first steps, which pays off only over a long training
    bf16 = use_bf16("auto", torch.device("cpu")) and len(x) >= BF16_FROM_IMAGES
    side = x.shape[-1]

    deadline = began + seconds
    epoch_steps = math.ceil(len(x) * (folds - 1) / folds / BATCH)
    max_steps = MAX_EPOCHS * epoch_steps
    probabilities = np.zeros((len(x), num_classes), np.float32)
    steps: list[int] = []
    predict_s = 0.1 * seconds / folds  # a guess for the first fold; then measured
    for fold in range(folds):
        held = torch.from_numpy(np.flatnonzero(fold_of == fold))
        kept = torch.from_numpy(np.flatnonzero(fold_of != fold))
        model = _new_model(num_classes, side, x[kept[:4096]])
        # each fold gets an equal share of what is left, so one slowed by a busy machine takes its excess
        # from those after it instead of overrunning the budget
        train_s = (deadline - time.perf_counter()) / (folds - fold) - predict_s
        taken = _train_fold(model, x[kept], targets[kept], max(train_s, 0.0), max_steps, multi_label, bf16, seed + fold)
        if taken < min(MIN_STEPS, MIN_EPOCHS * epoch_steps):
            return None, {
                "skipped": f"the time budget left {max(seconds, 0):.0f} s to train {folds} models on {len(x)} images: "
                f"{taken} steps for the first here, too few to judge labels; raise --time-budget"
            }
        steps.append(taken)
        predict_started = time.perf_counter()
        probabilities[held.numpy()] = _predict(model, x[held], multi_label, bf16)
        predict_s = time.perf_counter() - predict_started
        if progress:
            progress(fold + 1, folds)
    if multi_label:
        accuracy = float(((probabilities > 0.5) == targets.numpy().astype(bool)).mean())
    else:
        accuracy = float((probabilities.argmax(1) == keys).mean())
    epochs = sum(steps) / len(steps) / epoch_steps
    how = {
        "model": "fastnet_cifar widths 32-64-128",
        "image_size": side,
        "folds": folds,
        "steps_per_fold": steps,
        "seconds": round(time.perf_counter() - began, 1),
        "epochs_per_fold": round(epochs, 2),
        "bf16": bf16,
        "out_of_fold_accuracy" if not multi_label else "out_of_fold_label_accuracy": round(accuracy, 4),
    }
    return probabilities, how


def likely_label_errors(labels: list, probabilities: np.ndarray, multi_label: bool) -> list[tuple[int, float]]:
    """(index, label quality) of the images confident learning finds mislabelled, most likely first."""
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        raise VitkitError("finding label errors needs cleanlab: pip install 'vitkit[check]', or pass --no-label-errors")
    if multi_label:
        from cleanlab.multilabel_classification.rank import get_label_quality_scores as multilabel_scores

        # a label every image has (or none has) leaves nothing to judge, and cleanlab refuses it
        positives = np.zeros(probabilities.shape[1], np.int64)
        for label in labels:
            positives[list(label)] += 1
        judged = np.flatnonzero((positives > 0) & (positives < len(labels)))
        if len(judged) < 2:  # cleanlab's multi-label ranking needs two labels at least
            return []
        column = {c: i for i, c in enumerate(judged.tolist())}
        given = [[column[c] for c in label if c in column] for label in labels]
        probabilities = probabilities[:, judged]
        ranked = find_label_issues(given, probabilities, multi_label=True, return_indices_ranked_by="self_confidence")
        scores = multilabel_scores(given, probabilities)
    else:
        from cleanlab.count import num_label_issues

        given = np.asarray(labels)
        probabilities = calibrated(probabilities, given)
        scores = get_label_quality_scores(given, probabilities)
        # Confident learning's "both" rule (Northcutt et al. 2021, section 3.2: pruned by class and by noise
        # rate), with one count for the dataset: an image is flagged when its given label is among the
        # least supported (self-confidence) and another class is among the most preferred over it (normalized
        # margin), each as many as the confident joint says are mislabelled. One ranking alone also takes in
        # the images a quick model is merely unsure about; cleanlab's per-class counts overshoot its own total.
        count = num_label_issues(given, probabilities)
        ranked = np.argsort(scores, kind="stable")[:count]
        margin = get_label_quality_scores(given, probabilities, method="normalized_margin")
        ranked = ranked[np.isin(ranked, np.argsort(margin, kind="stable")[:count])]
    return [(int(i), float(scores[i])) for i in ranked if math.isfinite(scores[i])]


def calibrated(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Out-of-fold probabilities temperature-scaled to their NLL on the given labels. The fold models train
    to a near-zero loss, and their over-confident wrong predictions pass confident learning's per-class
    thresholds: the count of likely errors then takes in images the model gets wrong."""
    from ..eval.calibration import fit_temperature

    log_p = torch.from_numpy(probabilities).double().clamp_min(1e-12).log()
    temperature = fit_temperature(log_p, torch.from_numpy(labels))
    return torch.softmax(log_p / temperature, dim=1).float().numpy()
