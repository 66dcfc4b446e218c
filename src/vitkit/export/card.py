"""A model card (the README.md of a Hugging Face folder or hub repo): what the model is, what it was trained
on, how well it did, and how to load it with vitkit and, when its architecture allows, with transformers.
Everything comes from the checkpoint and its run folder; local paths are reduced to their last part."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..fileio import read_json
from ..models.base import FAMILY_TITLES
from ..options import ranked
from ..runfiles import RESULTS
from ..training.config import TrainConfig

# Training options worth a line in the card, in their declared `card` order, when the run recorded them.
TRAINING_OPTIONS = ranked(TrainConfig, "card")
METRICS = (
    ("top1", "top-1 accuracy"),
    ("top5", "top-5 accuracy"),
    ("precision_macro", "precision (macro)"),
    ("recall_macro", "recall (macro)"),
    ("f1_macro", "F1 (macro)"),
    ("f1_weighted", "F1 (weighted)"),
)
MAX_LISTED_CLASSES = 100


def run_results(checkpoint: Path) -> dict:
    """results.json of the run a checkpoint folder belongs to (the folder itself, or the run holding its
    best/ or last/); empty for a checkpoint outside a run."""
    for folder in (checkpoint, checkpoint.parent):
        if (folder / RESULTS).is_file():
            return read_json(folder / RESULTS)
    return {}


def local_name(value: str) -> str:
    """A local path's last part, so that a card never shows where files lay on the machine that made it;
    names and hub ids as they are."""
    path = Path(value)
    return path.name if path.is_absolute() or path.exists() else value


def describe_data(data: str | None) -> tuple[str, str | None]:
    """(how the card names the training data, its hub dataset id when it has one)."""
    if not data:
        return "data it does not record", None
    if data.startswith("hf:"):
        return f"the Hugging Face dataset `{data[3:]}`", data[3:]
    shown = local_name(data)
    return (f"a local image folder (`{shown}`)", None) if shown != data else (f"`{data}`", None)


def describe_preprocessing(pre) -> str:
    size = pre.square_size
    if pre.mode == "crop":
        text = f"the shorter side resized to {pre.resize_size} px ({pre.resample}), then the centre {size}x{size} px"
    else:
        text = f"resized to {pre.resize_size}x{pre.resize_size} px ({pre.resample})"
        text += f", then the centre {size}x{size} px" if pre.resize_size != size else ""
    if pre.decode_size is not None:
        text += f", then resized to {pre.image_size} px on the device"
    mean = ", ".join(f"{m:.4g}" for m in pre.mean)
    std = ", ".join(f"{s:.4g}" for s in pre.std)
    return f"{text}; scaled to [0, 1] and normalised with mean ({mean}) and std ({std}), {pre.channels} channel(s)"


def _table(rows: list[tuple[str, str]], header: tuple[str, str]) -> list[str]:
    return [f"| {header[0]} | {header[1]} |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]


def model_card(classifier, checkpoint: Path, title: str, load_as: str, transformers_ready: bool, reasons=()) -> str:
    """README.md text for `classifier`, loaded from `checkpoint`, published as `load_as` (a hub id or
    folder). `reasons`: why transformers cannot load it, when it cannot."""
    results = run_results(checkpoint)
    trained = classifier.meta.get("train_config") or {}
    family = classifier.meta.get("family", "model")
    data_text, dataset_id = describe_data(results.get("data") or trained.get("data"))
    names = classifier.class_names
    metadata = {
        "library_name": "transformers" if transformers_ready else "vitkit",
        "pipeline_tag": "image-classification",
        "tags": ["vitkit", "image-classification", family],
        **({"datasets": [dataset_id]} if dataset_id else {}),
        **({"metrics": ["accuracy"]} if results else {}),
    }
    architecture = results.get("model") or trained.get("preset") or trained.get("model")
    parameters = results.get("parameters")
    about = [f"`{local_name(architecture)}`"] if architecture else []
    about += [f"{parameters / 1e6:.2f}M parameters"] if parameters else []
    about_text = f" ({', '.join(about)})" if about else ""
    lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {title}",
        "",
        f"A {FAMILY_TITLES.get(family, family)} image classifier{about_text} "
        f"trained with vitkit on {data_text}: "
        f"{len(names)} classes, {classifier.image_size} px input.",
        "",
        "## Results",
        "",
    ]
    # the test split's, or the validation split's when there is none (older results.json files key them
    # "test" and "test_split")
    split_metrics = results.get("metrics") or results.get("test") or {}
    if split_metrics:
        split = results.get("split") or results.get("test_split", "test")
        epochs = (
            f", the weights of epoch {results['best_epoch']} of {results['epochs_run']}"
            if results.get("best_epoch")
            else ""
        )
        chose = (
            " (this split also chose the checkpoint, so the figures are optimistic)"
            if results.get("split_selected_checkpoint")
            else ""
        )
        lines += [f"On the {split} split ({split_metrics.get('count', '?')} images){epochs}{chose}:", ""]
        lines += _table(
            [(label, f"{split_metrics[key]:.4f}") for key, label in METRICS if key in split_metrics],
            ("metric", "value"),
        )
        per_class = split_metrics.get("per_class") or {}
        if per_class and len(per_class) <= MAX_LISTED_CLASSES:
            lines += ["", "| class | precision | recall | F1 | images |", "| --- | --- | --- | --- | --- |"]
            lines += [
                f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
                for name, m in per_class.items()
            ]
    else:
        lines.append("No evaluation was recorded with this checkpoint (it lies outside a vitkit run folder).")
    listed = ", ".join(f"`{n}`" for n in names[:MAX_LISTED_CLASSES])
    more = f" and {len(names) - MAX_LISTED_CLASSES} more (see config.json)" if len(names) > MAX_LISTED_CLASSES else ""
    lines += ["", "## Classes", "", f"{len(names)}: {listed}{more}.", ""]
    config = classifier.meta.get("config") or {}
    lines += ["## Model", "", f"- family: {family}"]
    if config:
        lines.append("- configuration: " + ", ".join(f"`{k}={v}`" for k, v in config.items()))
    lines += [f"- input: {describe_preprocessing(classifier.preprocessing)}", ""]
    options = [(key, trained[key]) for key in TRAINING_OPTIONS if trained.get(key) not in (None, False, 0, 0.0, "none")]
    if options:
        lines += ["## Training", ""]
        options = [(k, local_name(v) if isinstance(v, str) else v) for k, v in options]
        if results.get("train_time_s"):
            options.append(("training time", f"{results['train_time_s']:.0f} s"))
        lines += _table([(k, f"`{v}`") for k, v in options], ("option", "value"))
        lines.append("")
    lines += [
        "## Use",
        "",
        "With vitkit (`pip install 'vitkit[hf]'`):",
        "",
        "```python",
        "import vitkit",
        "",
        f'classifier = vitkit.load("{load_as}")',
        'classifier.predict("photo.jpg")  # {"path": "photo.jpg", "predictions": [{"label": ..., "score": ...}, ...]}',
        "```",
        "",
        f"or `vitkit predict {load_as} photos/`; fine-tune it on your own classes with "
        f"`vitkit train --data photos/ --pretrained {load_as}`.",
        "",
    ]
    if transformers_ready:
        lines += [
            "With transformers:",
            "",
            "```python",
            "from transformers import pipeline",
            "",
            f'classify = pipeline("image-classification", model="{load_as}")',
            'classify("photo.jpg")',
            "```",
            "",
            "The image processor computes vitkit's pixels exactly when it resizes with Pillow: load it with "
            f'`AutoImageProcessor.from_pretrained("{load_as}", backend="pil")` (the torchvision backend resizes '
            "tensors and differs slightly).",
        ]
        if classifier.preprocessing.decode_size is not None:
            lines.append(
                f"vitkit decodes images at {classifier.preprocessing.decode_size} px and resizes them to "
                f"{classifier.image_size} px on the device; the processor resizes in one step, so its scores "
                "differ slightly from vitkit's."
            )
    else:
        lines.append(
            f"transformers cannot load this model: it has no equivalent of {'; '.join(reasons)}. Load it with "
            "vitkit, or export it as ONNX (`vitkit export RUN model.onnx`) for ONNX Runtime."
        )
    return "\n".join(lines).rstrip() + "\n"
