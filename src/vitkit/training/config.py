"""The training configuration: every option declared once (type, default, group, help), and resolved
once. Precedence: declared defaults < dataset defaults < preset < explicit values (flags, or a YAML
config file under the flags)."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..data.augment import AugmentSpec
from ..data.builtin import BUILTIN
from ..data.hf import HUB_PREFIX
from ..data.prepare import DATASET_DEFAULTS, NORMALIZE, dataset_defaults
from ..models import get_preset, resolve_model_config
from ..options import check_choices, flag, name_list, option, typed_values
from .callbacks import tracker_names

DEFAULT_MODEL = "vit_micro_patch4_32"
GROUPS = {
    "data": "what to train on",
    "model": "architecture and starting weights",
    "optimisation": "optimizer, schedule and precision",
    "augmentation": "batched on the training device; normalisation",
    "run": "run folder, resuming, devices and output",
}
# What `--resume` may change: how the rest of the run executes, never what it computes.
RESUMABLE = (
    "epochs",
    "time_budget",
    "progress",
    "quiet",
    "device",
    "threads",
    "workers",
    "memory_limit_gb",
    "save_every",
    "eval_batch_size",
    "log",
)


_data = partial(option, group="data")
_model = partial(option, group="model")
_optim = partial(option, group="optimisation")
_run = partial(option, group="run")


@dataclass
class TrainConfig(AugmentSpec):
    data: str = _data(
        "digits",
        f"built-in dataset ({', '.join(BUILTIN)}), an image folder, a folder of parquet shards or of "
        "save_to_disk, or hf:NAME[:CONFIG] (a Hugging Face hub dataset)",
    )
    data_dir: str | None = _data(None, "download cache (default: $VITKIT_DATA, else ~/.cache/vitkit)")
    val_split: float = _data(0.1, "fraction of train held out for validation when the data has no val split")
    labels: str | None = _data(
        None,
        "a table (.csv, .tsv, .jsonl, .parquet) of the images under --data (a folder) and their label or labels, "
        "one row per image; a split column (train/val/test) assigns rows to splits",
    )
    image_column: str | None = _data(
        None,
        "the image column: of Hugging Face data (default: the one Image feature), or of --labels (paths relative "
        "to --data, with or without extension; default: a column named image, path, file, id, ...)",
    )
    label_column: str | None = _data(
        None,
        "the label column: of Hugging Face data (default: the ClassLabel feature), or of --labels: one column "
        "(a class, a list such as ['a', 'b'], or names joined by --label-separator) or comma-separated 0/1 "
        "columns (default: the table's 0/1 columns, else a column named label(s), tags, genre, ...)",
    )
    label_separator: str | None = _data(None, "--labels: the separator of several labels in one cell, e.g. '|'")
    multi_label: bool | None = _data(
        None,
        "any number of labels per image: sigmoid outputs, thresholds per label, mAP (default: when --labels has "
        "rows with several labels, or 0/1 label columns)",
    )
    image_size: int | None = _data(None, "model input size in pixels (default: the dataset's or preset's)")
    resize_mode: str | None = _data(None, "crop | stretch: non-square to square (default: the pretrained's, else crop)")
    crop_pct: float | None = _data(None, "part of the resized image the centre crop keeps, as in timm (default: 1)")
    resample: str | None = _data(None, "resize filter: bicubic, bilinear, lanczos, ... (default: bicubic)")
    skip_bad_images: bool = _data(False, "skip unreadable images (listed in skipped_images.txt) instead of failing")
    train_limit: int = _data(0, "use only this many training images, stratified (0: all)")
    test_limit: int = _data(0, "use only this many test images, stratified (0: all)")
    sampler: str = _data(
        "shuffle",
        "training order per epoch: shuffle (every image once) or balanced (as many images drawn with "
        "replacement, every class equally likely; seeded and resumable like the shuffle)",
        choices=("shuffle", "balanced"),
    )
    memory_limit_gb: float | None = _data(
        None,
        "decode a folder into memory up to this many GiB, stream larger ones from disk "
        "(default: $VITKIT_MEMORY_LIMIT_GB, else 4; 0: always stream)",
    )
    model: str | None = _model(None, f"registered model name (default: the preset's, else {DEFAULT_MODEL})")
    preset: str | None = _model(None, "named recipe: a model plus its training values (see `vitkit models --presets`)")
    model_args: dict[str, Any] = _model(None, "architecture override, repeatable, e.g. depth=6", factory=dict)
    pretrained: str | None = _model(None, "start from: hub id, HF/timm/DeiT checkpoint or a vitkit run folder")
    freeze_backbone: bool = _model(False, "train the classifier only (linear probe)")
    whiten_init: bool = _model(
        False,
        "set the model's first convolution to the whitening transform of training-image patches (eigenvectors "
        "of their covariance) before training (a new model only: not a --pretrained or resumed one)",
    )
    layer_decay: float = _model(0.0, "layer-wise lr decay per layer from the top, e.g. 0.75 (0: off)")
    head_lr: float = _model(0.0, "learning rate of the classifier (0: same as --lr)")
    epochs: int = _optim(
        30,
        "passes over the training set (with --time-budget: as many as fit); with --resume, a larger value "
        "extends a run, its schedule re-planned to the new length",
    )
    time_budget: float = _optim(
        0.0,
        "minutes for the whole command (data preparation, training, final evaluation and figures); the "
        "schedule is fitted to the time left for training (0: off)",
    )
    batch_size: int = _optim(128, "images per optimizer step (see --batch-scope)")
    batch_scope: str = _optim(
        "global", "global: --batch-size is split across processes; device: per process", choices=("global", "device")
    )
    eval_batch_size: int = _optim(256, "images per evaluation batch")
    optimizer: str = _optim("adamw", "optimizer", choices=("adamw", "sgd"))
    lr: float = _optim(1e-3, "peak learning rate")
    weight_decay: float = _optim(0.05, "decoupled weight decay (never on norms, biases, position embeddings)")
    momentum: float = _optim(0.9, "SGD momentum")
    nesterov: bool = _optim(False, "SGD: Nesterov momentum")
    lookahead: int = _optim(
        0,
        "Lookahead (Zhang et al., 2019): every N optimizer steps the weights move halfway from a slow copy "
        "toward where the optimizer took them, and the optimizer continues from there (0: off)",
    )
    schedule: str = _optim(
        "cosine", "learning-rate schedule after warmup", choices=("cosine", "linear", "constant", "plateau")
    )
    warmup_epochs: float = _optim(0.0, "linear warmup length in epochs (fractions allowed)")
    min_lr_ratio: float = _optim(0.01, "cosine floor as a fraction of --lr")
    plateau_factor: float = _optim(0.5, "plateau schedule: multiply the lr by this when the monitor stalls")
    plateau_patience: int = _optim(5, "plateau schedule: epochs without improvement before reducing")
    early_stopping: int = _optim(0, "stop after this many epochs without improvement; best weights kept (0: off)")
    monitor: str = _optim(
        "val_top1",
        "what best/, plateau and early stopping follow; multi-label runs follow val_map (macro mAP) for val_top1",
        choices=("val_top1", "val_loss", "val_map"),
    )
    label_smoothing: float = _optim(
        0.0,
        "label smoothing in [0, 1); multi-label: each label's 0/1 target moves this much toward 0.5 and beyond, "
        "to 1 - s/2 and s/2",
    )
    class_weights: str = _optim(
        "none",
        "training loss weight per class: balanced weighs class c by n/(k*count_c) (n training images, "
        "k classes); multi-label: each label's positives by its negatives/positives; the validation loss "
        "stays unweighted",
        choices=("none", "balanced"),
    )
    multilabel_loss: str = _optim(
        "bce",
        "multi-label loss on sigmoid outputs: bce (binary cross-entropy) or asymmetric (Ridnik et al. 2021: "
        "easy negatives down-weighted by p^gamma, very easy ones dropped; for imbalanced labels)",
        choices=("bce", "asymmetric"),
    )
    asl_gamma_neg: float = _optim(4.0, "asymmetric loss: focusing exponent of the negatives")
    asl_gamma_pos: float = _optim(0.0, "asymmetric loss: focusing exponent of the positives")
    asl_clip: float = _optim(0.05, "asymmetric loss: probability shift of the negatives (0: off)")
    mixup: float = _optim(0.0, "MixUp Beta alpha (0: off)")
    cutmix: float = _optim(0.0, "CutMix Beta alpha (0: off)")
    grad_clip: float = _optim(0.0, "max gradient norm (0: off)")
    accum_steps: int = _optim(1, "batches whose gradients add up to one optimizer step")
    micro_batch_size: int = _optim(0, "run each batch as chunks of this many images in one step (0: whole batch)")
    ema: float = _optim(0.0, "exponential moving average of the weights, decay per step, e.g. 0.999 (0: off)")
    amp: str = _optim(
        "auto", "bf16 autocast: auto uses it where the hardware has native bf16", choices=("auto", "bf16", "off")
    )
    compile: bool = _optim(False, "torch.compile the model (compile time is reported apart)")
    # The gain per preset: the channels_last_gain column of benchmarks/results/throughput*.json.
    channels_last: bool = _optim(
        True,
        "feed training batches channels-last (NHWC), faster for convolutional stems and ResNets on CPU; "
        "weights and checkpoints are unchanged",
    )
    alternate_flips: bool = option(
        False,
        "with --hflip: each image is flipped at random in the first epoch, then flipped and not on alternate "
        "epochs, so every pair of epochs sees it both ways",
        group="augmentation",
    )
    normalize: str = option(
        "fit",
        "input normalisation: fit (train-set mean/std), imagenet, half (0.5) or none",
        group="augmentation",
        choices=NORMALIZE,
    )
    mean: tuple[float, ...] | None = option(
        None, "explicit per-channel mean (wins over --normalize)", group="augmentation"
    )
    std: tuple[float, ...] | None = option(
        None, "explicit per-channel std (wins over --normalize)", group="augmentation"
    )
    seed: int = _run(0, "seed of weights, data order, splits and augmentation")
    out: str | None = _run(None, "run folder (default: runs/<model>-<data>, numbered when taken)")
    name: str | None = _run(None, "run name under runs/ when --out is not given")
    resume: bool = _run(False, "continue the run in --out from its last checkpoint")
    save_every: int = _run(0, "also write last/ every N optimizer steps (0: at epoch ends only)")
    device: str = _run("auto", "auto, cpu, cuda or cuda:N")
    threads: int = _run(0, "torch CPU threads (0: every core)")
    workers: int = _run(
        -1,
        "decoding processes per training process for data streamed from disk; -1: the cores of this "
        "node shared among its training processes, less one for training (at least 1, at most 8); "
        "0: decode in the training process",
    )
    progress: bool = _run(True, "progress bar on stderr (shown only when stderr is a terminal)")
    quiet: bool = _run(False, "no per-epoch lines on stderr (errors still print)")
    log: str | None = _run(
        None,
        "experiment trackers, comma-separated: tensorboard (event files in RUN/tensorboard/), mlflow "
        "($MLFLOW_TRACKING_URI, else a file store in RUN/mlruns); each logs the configuration and every "
        "epoch's metrics",
    )

    def validate(self) -> "TrainConfig":
        check_choices(self)
        at_least = {
            "epochs": 1,
            "batch_size": 1,
            "eval_batch_size": 1,
            "accum_steps": 1,
            "ra_num_ops": 0,
            "train_limit": 0,
            "test_limit": 0,
            "save_every": 0,
            "threads": 0,
            "workers": -1,
            "micro_batch_size": 0,
            "crop_padding": 0,
            "plateau_patience": 0,
            "early_stopping": 0,
            "lookahead": 0,
        }
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"{flag(name)} must be at least {low}, got {getattr(self, name)}")
        non_negative = (
            "time_budget",
            "weight_decay",
            "momentum",
            "warmup_epochs",
            "min_lr_ratio",
            "mixup",
            "cutmix",
            "grad_clip",
            "layer_decay",
            "head_lr",
            "rotation",
            "zoom",
            "rrc_scale",
            "asl_gamma_neg",
            "asl_gamma_pos",
        )
        if self.memory_limit_gb is not None and self.memory_limit_gb < 0:
            raise ValueError(f"--memory-limit-gb must not be negative, got {self.memory_limit_gb}")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{flag(name)} must not be negative, got {getattr(self, name)}")
        for name in ("label_smoothing", "ema", "asl_clip"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{flag(name)} must be in [0, 1), got {getattr(self, name)}")
        for name in ("random_erasing", "rrc_scale"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{flag(name)} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.val_split < 1:
            raise ValueError(f"--val-split must be between 0 and 1 (exclusive), got {self.val_split}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if not 0 < self.plateau_factor <= 1:
            raise ValueError(f"--plateau-factor must be in (0, 1], got {self.plateau_factor}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"--image-size must be a positive number of pixels, got {self.image_size}")
        if not 0 <= self.ra_magnitude <= 30:
            raise ValueError(f"--ra-magnitude must be between 0 and 30, got {self.ra_magnitude}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and (not values or (name == "std" and min(values) <= 0)):
                raise ValueError(
                    f"{flag(name)} needs one value per channel" + (", all positive" if name == "std" else "")
                )
        if self.alternate_flips and not self.hflip:
            raise ValueError("--alternate-flips chooses which images --hflip mirrors: add --hflip")
        tracker_names(self.log)
        if self.labels is not None:
            if not Path(self.data).is_dir():
                raise ValueError(f"--labels needs --data to be the folder its image paths are under, got {self.data}")
            if not Path(self.labels).is_file():
                raise FileNotFoundError(f"--labels {self.labels}: no such file")
        name, args = model_spec(self)
        resolve_model_config(name, **args)  # an unknown or mistyped --model-arg, refused before any work
        if self.data not in BUILTIN and not self.data.startswith(HUB_PREFIX) and not Path(self.data).exists():
            close = difflib.get_close_matches(self.data, list(BUILTIN), n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise FileNotFoundError(
                f"--data {self.data} does not exist: no such folder, and not a built-in dataset.{hint} "
                f"Built-in: {', '.join(BUILTIN)}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """A configuration from saved values (args.yaml of any vitkit version), validated."""
        unknown = sorted(set(values) - FIELDS)
        if unknown:
            raise ValueError(f"unknown training option(s) {name_list(unknown)}; valid: {', '.join(sorted(FIELDS))}")
        return cls(**typed_values(values, cls)).validate()


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def make_config(**values: Any) -> TrainConfig:
    """TrainConfig from explicit values, filling the rest from the preset and the dataset defaults."""
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise ValueError(f"unknown training option(s) {name_list(unknown)}; valid: {', '.join(sorted(FIELDS))}")
    preset = get_preset(values["preset"]) if values.get("preset") else None
    if preset is not None:
        values = {**values, "preset": preset.name}  # an earlier name of it (PRESET_ALIASES) recorded as today's
    data = values.get("data", preset.train.get("data", TrainConfig.data) if preset else TrainConfig.data)
    builtin = DATASET_DEFAULTS.get(data, {})
    if preset is None:
        defaults = dataset_defaults(data)
        if (
            values.get("pretrained") and data not in BUILTIN
        ):  # photos: the checkpoint and data decide (build.input_size)
            defaults = {k: v for k, v in defaults.items() if k != "image_size"}
    elif preset.native_size:
        native = {key: builtin[key] for key in ("image_size", "crop_padding") if key in builtin}
        defaults = {**preset.train, **native}
    else:  # a preset is complete on its own: dataset defaults must not leak into a seed reproduction
        defaults = preset.train
    return TrainConfig.from_dict({**defaults, **values})


def model_spec(cfg: TrainConfig, size: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(registered model name, architecture arguments): the preset's model with its arguments, changed
    by `size` (one of its budget sizes), under the user's; or the named model, or the default one."""
    if cfg.preset and not cfg.model:
        preset = get_preset(cfg.preset)
        return preset.model, {**preset.model_args, **(size or {}), **cfg.model_args}
    return cfg.model or DEFAULT_MODEL, dict(cfg.model_args)


def budget_sizes(cfg: TrainConfig) -> tuple[tuple[float, dict[str, Any]], ...]:
    """The preset's larger sizes that --time-budget chooses among (none without a budget or a preset)."""
    if cfg.time_budget and cfg.preset and not cfg.model:
        return get_preset(cfg.preset).budget_sizes
    return ()


def resume_changes(saved: TrainConfig, changes: dict[str, Any]) -> dict[str, Any]:
    """The changes a resumed run may take; any other option that differs from the saved run is an
    error naming it (the run would no longer compute what it started computing)."""
    refused = sorted(k for k, v in changes.items() if k not in RESUMABLE and getattr(saved, k, v) != v)
    if refused:
        names = ", ".join(flag(k) for k in refused)
        raise ValueError(
            f"{names} cannot change when resuming (the run was started with "
            f"{', '.join(f'{k}={getattr(saved, k)!r}' for k in refused)}); only {', '.join(map(flag, RESUMABLE))} "
            "can. Start a new run to change the others"
        )
    return {k: v for k, v in changes.items() if k in RESUMABLE}
