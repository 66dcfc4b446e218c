"""The typed training configuration. Precedence: defaults < dataset defaults < preset < explicit values."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..models import get_preset

SCHEDULES = ("cosine", "linear", "constant", "plateau")
OPTIMIZERS = ("adamw", "sgd")
NORMALIZE = ("fit", "imagenet", "half", "none")
MONITORS = ("val_top1", "val_loss")


@dataclass
class TrainConfig:
    # data
    data: str = "digits"  # a built-in dataset name or an image folder
    data_dir: str | None = None  # download cache (else $VITKIT_DATA, else ~/.cache/vitkit)
    val_split: float = 0.1  # held out of train when the data has no validation split
    image_size: int | None = None  # model input size; None: the dataset's default
    resize_mode: str | None = None  # crop | stretch; None: the pretrained checkpoint's, else crop
    crop_pct: float | None = None  # part of the resized image the centre crop keeps; None: the checkpoint's, else 1
    resample: str | None = None  # resize filter (bicubic, bilinear, ...); None: the checkpoint's, else bicubic
    skip_bad_images: bool = False
    train_limit: int = 0  # use only this many training images (stratified); 0: all
    test_limit: int = 0
    # model
    model: str | None = None  # registered model name; None: the preset's or vit_micro_patch4_32
    preset: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)  # architecture overrides
    pretrained: str | None = None  # hub id, local HF/timm/DeiT checkpoint or vitkit run to start from
    freeze_backbone: bool = False  # train the head only (linear probe)
    layer_decay: float = 0.0  # layer-wise lr decay, e.g. 0.75 (0: off)
    head_lr: float = 0.0  # learning rate of the classifier head (0: same as lr)
    # optimisation
    epochs: int = 30
    time_budget: float = 0.0  # minutes; when set, the schedule is fitted to wall clock instead of epochs
    batch_size: int = 128
    batch_scope: str = "global"  # global: batch_size is split across processes | device: per process
    eval_batch_size: int = 256
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05  # never applied to norms, biases, position embeddings or class tokens
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.01  # cosine floor as a fraction of lr
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    early_stopping: int = 0  # patience in epochs (0: off); the best weights are restored
    monitor: str = "val_top1"  # what best/, plateau and early stopping follow
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta alpha; 0: off
    cutmix: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0: off
    accum_steps: int = 1
    micro_batch_size: int = 0  # run each batch as chunks of this size in one optimizer step (0: whole batch)
    ema: float = 0.0  # EMA decay per step (e.g. 0.999); 0: off
    amp: str = "auto"  # auto (bf16 on GPUs that have it) | bf16 | off
    compile: bool = False
    # augmentation (batched on the training device)
    normalize: str = "fit"  # fit (train-set mean/std) | imagenet | half (0.5/0.5) | none
    mean: tuple[float, ...] | None = None  # explicit statistics win over `normalize`
    std: tuple[float, ...] | None = None
    hflip: bool = False
    rotation: float = 0.0
    zoom: float = 0.0
    crop_padding: int = 0
    rrc_scale: float = 0.0
    auto_augment: str = "none"
    ra_num_ops: int = 2
    ra_magnitude: int = 9
    random_erasing: float = 0.0
    # run
    seed: int = 0
    out: str | None = None  # run folder; None: runs/<name>
    name: str | None = None
    resume: bool = False
    save_every: int = 0  # also write last/ every N optimizer steps (0: at epoch ends only)
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0: every core
    workers: int = 0  # DataLoader workers for streamed folders
    progress: bool = True

    def validate(self) -> "TrainConfig":
        checks = [
            (self.schedule, SCHEDULES, "schedule"),
            (self.optimizer, OPTIMIZERS, "optimizer"),
            (self.normalize, NORMALIZE, "normalize"),
            (self.monitor, MONITORS, "monitor"),
            (self.amp, ("auto", "bf16", "off"), "amp"),
            (self.batch_scope, ("global", "device"), "batch_scope"),
        ]
        for value, allowed, name in checks:
            if value not in allowed:
                raise ValueError(f"--{name.replace('_', '-')} {value!r}: use one of {', '.join(allowed)}")
        for name in ("epochs", "batch_size", "eval_batch_size", "accum_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}

# Sensible from-scratch defaults per built-in dataset (a user's values and presets override them).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": dict(
        image_size=16,
        epochs=40,
        batch_size=64,
        lr=2e-3,
        warmup_epochs=3,
        crop_padding=1,
        label_smoothing=0.1,
        val_split=0.1,
    ),
    "mnist": dict(image_size=28, epochs=10, crop_padding=2),
    "fashion-mnist": dict(image_size=28, epochs=10, crop_padding=2, hflip=True),
    "cifar10": dict(image_size=32, epochs=50, crop_padding=4, hflip=True),
    "cifar100": dict(image_size=32, epochs=100, crop_padding=4, hflip=True),
}
FOLDER_DEFAULTS: dict[str, Any] = dict(image_size=32, epochs=30, hflip=True, rrc_scale=0.35, val_split=0.2)


def make_config(**values: Any) -> TrainConfig:
    """TrainConfig from explicit values, filling the rest from the preset and the dataset defaults."""
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise ValueError(f"unknown training option(s) {', '.join(unknown)}; valid: {', '.join(sorted(FIELDS))}")
    preset = get_preset(values["preset"]) if values.get("preset") else None
    data = values.get("data", preset.train.get("data", TrainConfig.data) if preset else TrainConfig.data)
    from ..data.builtin import BUILTIN

    builtin = DATASET_DEFAULTS.get(data, {})
    if preset is None:
        defaults = builtin if data in BUILTIN else FOLDER_DEFAULTS
    elif preset.native_size:
        native = {key: builtin[key] for key in ("image_size", "crop_padding") if key in builtin}
        defaults = {**preset.train, **native}
    else:  # a preset is complete on its own: dataset defaults must not leak into a seed reproduction
        defaults = preset.train
    merged = {**defaults, **values}
    for key in ("mean", "std"):
        if merged.get(key) is not None:
            merged[key] = tuple(merged[key])
    return TrainConfig(**merged).validate()
