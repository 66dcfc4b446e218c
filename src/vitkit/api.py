"""The Python API behind the command line: train, evaluate, load, predict."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .data.augment import BatchAugment
from .data.builtin import BUILTIN
from .data.loader import BatchLoader
from .models.io import load_model
from .train.config import make_config
from .train.engine import evaluate_loader, prepare_data, resolve_device, resume_config, Trainer


def train(resume: str | os.PathLike | None = None, **options: Any) -> dict[str, Any]:
    """Train a model and write a run folder; returns results.json's content plus `run_dir`.

    `vitkit.train(data="cifar10", model="vit_tiny_patch4_32", epochs=20)`; any TrainConfig field is an
    option, a `preset` fills in the seed's values. `resume=RUN_DIR` continues an interrupted run.
    """
    cfg = resume_config(resume, **options) if resume else make_config(**options)
    return Trainer(cfg).run()


class Classifier:
    """A trained model with its preprocessing and class names, ready for images."""

    def __init__(self, model, meta: dict, device: str = "auto"):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.meta = meta
        self.class_names: list[str] = meta.get("class_names") or [str(i) for i in range(model.config.num_classes)]
        pre = meta.get("preprocessing", {})
        self.image_size = pre.get("image_size", model.config.image_size)
        self.stored_size = pre.get("stored_size", self.image_size)  # decode size before the device resize
        self.channels = pre.get("channels", model.config.in_chans)
        self.augment = BatchAugment(self.image_size, pre.get("mean", (0.0,) * self.channels),
                                    pre.get("std", (1.0,) * self.channels), self.channels)

    @torch.inference_mode()
    def predict_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW (any size, any channel count) -> class probabilities."""
        return self.model(self.augment.eval(images.to(self.device))).float().softmax(-1).cpu()


def load(checkpoint: str | os.PathLike, device: str = "auto") -> Classifier:
    """Load a checkpoint folder (a run's best/ or last/, or the run folder itself)."""
    path = Path(checkpoint)
    if (path / "best" / "config.json").is_file():
        path = path / "best"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    model, meta = load_model(path)
    return Classifier(model, meta, device)


def evaluate(checkpoint: str | os.PathLike, data: str | None = None, split: str = "test",
             batch_size: int = 256, device: str = "auto", **data_options: Any) -> dict[str, Any]:
    """Recompute the metrics of a checkpoint on a split (train, val or test) of a dataset."""
    clf = load(checkpoint, device)
    saved = clf.meta.get("train_config", {})
    options = {k: saved[k] for k in ("data", "data_dir", "val_split", "seed", "train_limit", "test_limit")
               if k in saved}
    options.update({k: v for k, v in data_options.items() if v is not None})
    if data is not None:
        options["data"] = data
    if "data" not in options:
        raise ValueError("--data is required: the checkpoint does not say which data it was trained on")
    if options["data"] not in BUILTIN and not Path(options["data"]).exists():
        raise FileNotFoundError(f"data folder {options['data']} does not exist")
    cfg = make_config(**options)
    dataset, _ = prepare_data(cfg, clf.image_size)
    if dataset.num_classes != len(clf.class_names):
        raise ValueError(f"the checkpoint has {len(clf.class_names)} classes but {cfg.data} has "
                         f"{dataset.num_classes}: evaluate on the data it was trained for, or fine-tune it first")
    part = {"train": dataset.train, "val": dataset.val, "test": dataset.test}.get(split)
    if split not in ("train", "val", "test"):
        raise ValueError(f"--split {split!r}: use train, val or test")
    if part is None:
        raise ValueError(f"{cfg.data} has no {split} split")
    loader = BatchLoader(part, batch_size, shuffle=False, device=clf.device)
    metrics = evaluate_loader(clf.model, loader, clf.augment, dataset.num_classes).compute(dataset.class_names)
    return {"split": split, "data": cfg.data, **metrics}
