"""A checkpoint judged on data: `evaluate` recomputes its metrics, `top_losses` finds its most confident
mistakes, on its run's own held-out split or on other data (`_scored_images` picks the images)."""

from __future__ import annotations

import dataclasses
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

from ..data.loader import AUTO_WORKERS, BatchLoader
from ..data.prepare import DataOptions, dataset_defaults, prepare_data
from ..errors import VitkitError
from ..inference import Classifier, load
from ..options import check_known, names_where, option, typed_values
from .agreement import bf16_agreement, record_bf16_agreement
from .loop import evaluate_loader, per_sample_predictions

DATA_DIR_HELP = "cache of downloaded and decoded datasets (default: $VITKIT_DATA, else ~/.cache/vitkit)"
_evaluation = partial(option, group="evaluation", commands=("eval", "top-losses"))


@dataclasses.dataclass
class EvaluationOptions:
    """The options of `vitkit eval` and `vitkit top-losses` (`commands`: which takes each), declared once
    for them and for `evaluate` and `top_losses`, whose defaults they are."""

    count: int = _evaluation(16, "mistakes to show", at_least=1, commands=("top-losses",))
    out: str = _evaluation("top_losses.png", "PNG file to write", commands=("top-losses",))
    data: str | None = _evaluation(
        None,
        "dataset name or folder (default: what the checkpoint was trained on); other data than the run's is "
        "scored whole: every image of a folder or label table, a named dataset's test split",
    )
    data_dir: str | None = _evaluation(None, DATA_DIR_HELP)
    labels: str | None = _evaluation(None, "label table of --data's images (default: the checkpoint's, if it had one)")
    split: str | None = _evaluation(
        None,
        "on the run's own data, default: the split the run reported (test, else val); on other data, one of "
        "its own splits, or all (the default for a folder or table)",
        choices=("all", "train", "val", "test"),
    )
    batch_size: int = _evaluation(256, "images per batch", at_least=1)
    flip_tta: bool = _evaluation(
        False,
        "average each image's logits with its mirror image's (test-time flip augmentation; twice the compute)",
    )
    crop_tta: bool = _evaluation(
        False,
        "multi-crop test-time augmentation: also two crops moved one pixel diagonally, weighted a quarter "
        "each (with --flip-tta each with its mirror: six passes)",
        commands=("eval",),
    )
    json: bool = _evaluation(False, "print the whole report as JSON")


# what the data to evaluate on keeps of the run's data options when it is other data
KEPT_FOR_OTHER_DATA = names_where(DataOptions, other_data=True)


def _same_source(given: str | None, saved: str | None) -> bool:
    """Whether a --data or --labels value names what the run recorded (paths compared resolved)."""
    if given is None or given == saved:
        return True
    return saved is not None and Path(given).exists() and Path(given).resolve() == Path(saved).resolve()


def checkpoint_split(clf: Classifier, data: str | None, split: str | None, data_options: dict):
    """The images a checkpoint is judged on, as four values: (data, the prepared dataset, the split's name,
    the split). `data`, `split` and `data_options` as `vitkit.evaluate` takes them. By default, the run's
    own data and the split it reported on; on other data, every image of a folder or table, or a named
    dataset's test split (`_scored_images` chooses, and refuses a mismatch with a VitkitError)."""
    return _scored_images(clf, data, split, data_options)[:4]


def _scored_images(clf: Classifier, data: str | None, split: str | None, data_options: dict):
    """(data, dataset, split name, split, source, own) a checkpoint is judged on; `own`: its run's data.
    On its run's own data (the default), the run's split: by default the one it reported on (test, or val
    when the data has no test). On other data, the data's own splits and nothing held out: by default
    every image of a folder or table ("all"), a named dataset's test split. `source` says which images,
    for people."""
    from ..data.builtin import BUILTIN
    from ..data.hf import is_hf_source
    from ..data.splits import join_splits

    fields = {f.name for f in dataclasses.fields(DataOptions)}
    check_known(data_options, DataOptions, "data options")
    saved = clf.meta.get("train_config", {})
    given = {k: v for k, v in data_options.items() if v is not None}
    other = not (_same_source(data, saved.get("data")) and _same_source(given.get("labels"), saved.get("labels")))
    options = {k: saved[k] for k in (KEPT_FOR_OTHER_DATA if other else fields) if k in saved}
    if other and given.get("labels"):
        options["multi_label"] = clf.multi_label
    options.update(given)
    if data is not None:
        options["data"] = data
    if "data" not in options:
        raise VitkitError("--data is required: the checkpoint does not say which data it was trained on")
    if split not in (None, "all", "train", "val", "test"):
        raise VitkitError(f"--split {split!r}: use all, train, val or test")
    if split == "all" and not other:
        raise VitkitError("--split all is for other data than the run's: its own data has a held-out split to score")
    options.setdefault("val_split", dataset_defaults(options["data"]).get("val_split", DataOptions.val_split))
    dataset, _ = prepare_data(DataOptions(**typed_values(options, DataOptions)), clf.preprocessing, not other)
    if dataset.num_classes != len(clf.class_names):
        raise VitkitError(
            f"the checkpoint has {len(clf.class_names)} classes but {options['data']} has "
            f"{dataset.num_classes}: evaluate on the data it was trained for, or fine-tune it first"
        )
    if dataset.multi_label != clf.multi_label:
        kinds = {True: "multi-label", False: "single-label"}
        raise VitkitError(
            f"the checkpoint is {kinds[clf.multi_label]} but {options['data']} is {kinds[dataset.multi_label]}: "
            "evaluate on the data it was trained for"
        )
    parts = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
    parts = {name: part for name, part in parts.items() if part is not None and len(part)}
    named = options["data"] in BUILTIN or (is_hf_source(options["data"]) and not options.get("labels"))
    if split is None:
        split = "test" if "test" in parts and (named or not other) else ("all" if other else "val")
    if split == "all":
        part = join_splits(list(parts.values()))
    elif split not in parts:
        raise VitkitError(f"{options['data']} has no {split} split: pass --split {' or '.join(['all', *parts])}")
    else:
        part = parts[split]
    where = options["data"] + (f" labelled by {options['labels']}" if options.get("labels") else "")
    if not other:
        source = f"{where}, the run's own {split} split"
    elif split == "all":
        source = f"every image of {where}" + (f" ({' + '.join(parts)} splits)" if len(parts) > 1 else "")
    else:
        source = f"the {split} split of {where}"
    return options["data"], dataset, split, part, source, not other


def evaluate(
    checkpoint: str | os.PathLike,
    data: str | None = None,
    split: str | None = None,
    batch_size: int = EvaluationOptions.batch_size,
    device: str = "auto",
    flip_tta: bool = EvaluationOptions.flip_tta,
    precision: str = "fp32",
    crop_tta: bool = EvaluationOptions.crop_tta,
    **data_options: Any,
) -> dict[str, Any]:
    """Recompute the metrics of a checkpoint on its run's data, by default on the split the run reported
    on (test, or val when the data has no test split); or score it on other `data`: by default every
    image of a folder or label table (split "all"), a named dataset's test split; `split` picks one of
    the data's own splits (train, val, test). The report's `source` says which images. `flip_tta` averages
    each image's logits with its mirror image's (for data whose classes survive a horizontal flip);
    `crop_tta` adds two crops moved a pixel diagonally (multi-crop TTA, single-label models).

    precision="fp32" (the default) reproduces the metrics a run reported, which are computed in fp32
    whatever the training precision. "bf16" (or "auto" where it picks bf16) evaluates under bf16 and adds
    `agreement`: top-1 agreement with fp32 (whole label sets for a multi-label model) and the accuracy
    change, also recorded in the checkpoint folder for `--precision auto` when the split is held out. An
    INT8 .onnx export reports the agreement measured when it was exported."""
    clf = load(checkpoint, device, backend="torch", precision=precision)
    data, dataset, split, part, source, own = _scored_images(clf, data, split, data_options)
    scored = {"split": split, "data": data, "source": source, "run_data": own}
    loader = BatchLoader(part, batch_size, shuffle=False, device=clf.device, workers=AUTO_WORKERS)
    if clf.multi_label:  # mAP, and F1 at the thresholds the checkpoint was tuned to on its validation split
        from .multilabel import evaluate_multilabel

        if crop_tta:
            raise VitkitError("--crop-tta is for single-label models; multi-label evaluation takes --flip-tta")

        metrics, _, _ = evaluate_multilabel(
            clf.runner, loader, clf.input_transform, clf.class_names, clf.thresholds, flip_tta
        )
        report = {**scored, "flip_tta": flip_tta, "precision": clf.precision, **metrics}
    else:
        metrics = evaluate_loader(
            clf.runner, loader, clf.input_transform, dataset.num_classes, flip_tta=flip_tta, crop_tta=crop_tta
        )
        report = {**scored, "flip_tta": flip_tta, "crop_tta": crop_tta, "precision": clf.precision}
        report.update(metrics.compute(dataset.class_names))
    if clf.precision == "bf16":
        agreement = bf16_agreement(clf.model, loader, clf.input_transform.for_inference, split, clf.thresholds)
        report["agreement"] = agreement
        record_bf16_agreement(clf.folder, {**agreement, "data": data}, notice=lambda line: print(line, file=sys.stderr))
    elif "agreement" in clf.meta:
        report["agreement"] = clf.meta["agreement"]
    return report


def top_losses(
    checkpoint: str | os.PathLike,
    count: int = EvaluationOptions.count,
    out: str | os.PathLike | None = EvaluationOptions.out,
    data: str | None = None,
    split: str | None = None,
    batch_size: int = EvaluationOptions.batch_size,
    device: str = "auto",
    flip_tta: bool = EvaluationOptions.flip_tta,
    **data_options: Any,
) -> dict[str, Any]:
    """The checkpoint's most confident mistakes on a split (by default the one its run reported on; on
    other `data`, the images `evaluate` scores there):
    the `count` misclassified images with the highest loss, highest first. Each item has the image's
    `index` in the split (and `path` when the split is read from files), the true and predicted class,
    the predicted class's probability, the true class's probability and the loss; `out` is the image
    grid to write (None: none); `flip_tta` as in `evaluate`."""
    if count < 1:
        raise VitkitError(f"--count must be at least 1, got {count}")
    clf = load(checkpoint, device, backend="torch", precision="fp32")
    if clf.multi_label:
        raise VitkitError(f"{checkpoint} is multi-label: top-losses ranks single-label mistakes; use vitkit eval")
    data, dataset, split, part, source, own = _scored_images(clf, data, split, data_options)
    loader = BatchLoader(part, batch_size, shuffle=False, device=clf.device, workers=AUTO_WORKERS)
    losses, probs = per_sample_predictions(clf.runner, loader, clf.input_transform, flip_tta, clf.logit_divisor)
    labels = part.labels
    predicted = probs.argmax(dim=1)
    wrong = (predicted != labels).nonzero().flatten()
    worst = wrong[losses[wrong].argsort(descending=True, stable=True)][:count]
    names, paths = dataset.class_names, getattr(part, "paths", None)
    items = [
        {
            "index": i,
            **({"path": str(paths[i])} if paths is not None else {}),
            "true": names[int(labels[i])],
            "predicted": names[int(predicted[i])],
            "probability": float(probs[i, predicted[i]]),
            "true_probability": float(probs[i, labels[i]]),
            "loss": float(losses[i]),
        }
        for i in worst.tolist()
    ]
    if out is not None and items:
        from ..viz.plots import plot_image_grid
        from ..viz.report import display_images

        images, _ = next(BatchLoader(part.subset(worst), len(worst), shuffle=False).batches())
        titles = [f"{x['predicted']} ({x['probability']:.2f})\ntrue: {x['true']}  loss {x['loss']:.2f}" for x in items]
        heading = f"most confident mistakes on {data} [{split}]: {len(items)} of {len(wrong)} in {len(part)} images"
        plot_image_grid(display_images(images, clf.input_transform).numpy(), titles, out, heading, [True] * len(items))
    return {
        "data": data,
        "split": split,
        "source": source,
        "run_data": own,
        "images": len(part),
        "mistakes": len(wrong),
        "items": items,
        "figure": None if out is None or not items else str(out),
    }
