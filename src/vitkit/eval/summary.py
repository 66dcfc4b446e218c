"""The reports of `evaluate` and `top_losses` as the text `vitkit eval` and `vitkit top-losses` print."""

from __future__ import annotations

from .agreement import describe

MULTI_LABEL_KEYS = ("map_macro", "map_micro", "f1_macro", "f1_micro", "f1_macro@0.5", "f1_micro@0.5", "loss")


def evaluation_text(metrics: dict) -> str:
    """A heading naming the data, split, TTA and precision, then one metric a line (multi-label: the
    label counts and the per-label table too)."""
    tta = [name for name, on in (("flip", metrics["flip_tta"]), ("crop", metrics.get("crop_tta"))) if on]
    split = f"{metrics['split']}, {' + '.join(tta)} TTA" if tta else metrics["split"]
    lines = [f"{metrics['data']} [{split}] {metrics['count']} images, {metrics['precision']}"]
    if not metrics["run_data"]:
        lines.append(f"  scored: {metrics['source']} (not the run's data)")
    if "map_macro" in metrics:
        from .multilabel import label_table

        lines += [f"  {key:<16} {metrics[key]:.4f}" for key in MULTI_LABEL_KEYS]
        lines.append(
            f"  labels per image: {metrics['mean_predicted_labels']:.2f} predicted at the tuned thresholds, "
            f"{metrics['mean_predicted_labels@0.5']:.2f} at 0.5, {metrics['mean_true_labels']:.2f} true"
        )
        return "\n".join([*lines, label_table(metrics)])
    keys = ["top1", "top5", "loss", "precision_macro", "recall_macro", "f1_macro", "f1_weighted"]
    if len(metrics["class_names"]) <= 5:  # top-5 of 5 classes or fewer is 1 by definition
        keys.remove("top5")
    lines += [f"  {key:<16} {metrics[key]:.4f}" for key in keys]
    if "agreement" in metrics:
        lines.append(f"  {describe(metrics['agreement'])}")
    return "\n".join(lines)


def top_losses_text(report: dict) -> str:
    """A heading with the mistakes among the images, then one mistake a line, highest loss first, and the
    figure written."""
    lines = [f"{report['data']} [{report['split']}]: {report['mistakes']} mistakes in {report['images']} images"]
    if not report["run_data"]:
        lines.append(f"  scored: {report['source']} (not the run's data)")
    for rank, item in enumerate(report["items"], 1):
        where = item.get("path", f"#{item['index']}")
        lines.append(
            f"{rank:>3}  loss {item['loss']:.3f}  predicted {item['predicted']} ({item['probability']:.3f})  "
            f"true {item['true']} ({item['true_probability']:.3f})  {where}"
        )
    if report["figure"]:
        lines.append(f"-> {report['figure']}")
    return "\n".join(lines)
