"""The training configuration: every option declared once (type, default, group, help, bounds, whether
`--resume` may change it, which commands take it, whether it holds a path, its row in a model card) and
its validation. resolve.py layers a run's values into one (defaults, dataset, preset, --config file, flags).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..data.augment import AugmentSpec
from ..data.builtin import BUILTIN
from ..data.hf import HUB_PREFIX
from ..data.prepare import NORMALIZE, DataOptions
from ..errors import MissingFile, VitkitError
from ..models import get_preset, resolve_model_config
from ..options import (
    check_known,
    check_options,
    flag,
    for_command,
    names_where,
    option,
    read_yaml_options,
    typed_values,
)
from .callbacks import tracker_names
from .sizing import BudgetSize

DEFAULT_MODEL = "vit_micro_patch4_32"
GROUPS = {
    "data": "what to train on",
    "model": "architecture and starting weights",
    "optimisation": "optimizer, schedule and precision",
    "augmentation": "batched on the training device; normalisation",
    "run": "run folder, resuming, devices and output",
}
_data = partial(option, group="data")
_model = partial(option, group="model")
_optim = partial(option, group="optimisation")
_run = partial(option, group="run")


@dataclass
class TrainConfig(DataOptions, AugmentSpec):
    image_size: int | None = _data(None, "model input size in pixels (default: the dataset's or preset's)", at_least=1)
    resize_mode: str | None = _data(None, "crop | stretch: non-square to square (default: the pretrained's, else crop)")
    crop_pct: float | None = _data(None, "part of the resized image the centre crop keeps, as in timm (default: 1)")
    resample: str | None = _data(None, "resize filter: bicubic, bilinear, lanczos, ... (default: bicubic)")
    sampler: str = _data(
        "shuffle",
        "training order per epoch: shuffle (every image once) or balanced (as many images drawn with "
        "replacement, every class equally likely; seeded and resumable like the shuffle)",
        choices=("shuffle", "balanced"),
    )
    model: str | None = _model(None, f"registered model name (default: the preset's, else {DEFAULT_MODEL})")
    preset: str | None = _model(None, "named recipe: a model plus its training values (see `vitkit models --presets`)")
    model_args: dict[str, Any] = _model(None, "architecture override, repeatable, e.g. depth=6", factory=dict)
    pretrained: str | None = _model(
        None, "start from: hub id, HF/timm/DeiT checkpoint or a vitkit run folder", path=True, card=1
    )
    freeze_backbone: bool = _model(False, "train the classifier only (linear probe)", card=11)
    whiten_init: bool = _model(
        False,
        "set the model's first convolution to the whitening transform of training-image patches (eigenvectors "
        "of their covariance) before training (a new model only: not a --pretrained or resumed one)",
    )
    layer_decay: float = _model(
        0.0, "layer-wise lr decay per layer from the top, e.g. 0.75 (0: off)", at_least=0, card=10
    )
    head_lr: float = _model(0.0, "learning rate of the classifier (0: same as --lr)", at_least=0)
    norm_lr_scale: float = _model(
        1.0,
        "learning-rate multiplier of the normalisation layers' parameters (BatchNorm/LayerNorm scales and "
        "shifts), e.g. 64 for a network whose BatchNorms only shift, as in airbench",
        above=0,
    )
    norm_bias_decay: bool = _model(
        False,
        "weight decay also on the normalisation layers' parameters and the biases, each decayed per step "
        "as much as the weights whatever --norm-lr-scale (airbench); by default they are not decayed",
    )
    freeze_after: dict[str, Any] = _model(
        None,
        "stop training a parameter after this many epochs, repeatable: NAME=EPOCHS, NAME a parameter or a "
        "module holding parameters, e.g. whiten.bias=3 (airbench's whitening bias)",
        factory=dict,
    )
    epochs: int = _optim(
        30,
        "passes over the training set (with --time-budget: as many as fit); with --resume, a larger value "
        "extends a run, its schedule re-planned to the new length",
        at_least=1,
        resumable=True,
        commands=("train",),
        card=2,
    )
    time_budget: float = _optim(
        0.0,
        "minutes for the whole command (data preparation, training, final evaluation and figures); the "
        "schedule is fitted to the time left for training (0: off)",
        at_least=0,
        resumable=True,
        commands=("train",),
    )
    batch_size: int = _optim(128, "images per optimizer step (see --batch-scope)", at_least=1, card=3)
    batch_scope: str = _optim(
        "global", "global: --batch-size is split across processes; device: per process", choices=("global", "device")
    )
    drop_last: bool = _optim(
        True, "drop each epoch's last incomplete training batch (--no-drop-last trains on it, a smaller batch)"
    )
    eval_batch_size: int = _optim(256, "images per evaluation batch", at_least=1, resumable=True, commands=("train",))
    optimizer: str = _optim("adamw", "optimizer", choices=("adamw", "sgd"), card=4)
    lr: float = _optim(1e-3, "peak learning rate", above=0, commands=("train",), card=5)
    weight_decay: float = _optim(
        0.05, "decoupled weight decay (never on norms, biases, position embeddings)", at_least=0, card=6
    )
    momentum: float = _optim(0.9, "SGD momentum", at_least=0)
    nesterov: bool = _optim(False, "SGD: Nesterov momentum")
    lookahead: int = _optim(
        0,
        "Lookahead (Zhang et al., 2019): every N optimizer steps the weights move halfway from a slow copy "
        "toward where the optimizer took them, and the optimizer continues from there (0: off)",
        at_least=0,
    )
    lookahead_ema: float = _optim(
        0.0,
        "airbench's Lookahead: a moving average of the model's whole state (weights and BatchNorm statistics) "
        "that every --lookahead-ema-every optimizer steps takes a step toward the model, which then continues "
        "from it, as it does at each epoch's end; this is its decay per optimizer step, e.g. 0.95 (0: off)",
        at_least=0,
        below=1,
    )
    lookahead_ema_every: int = _optim(5, "--lookahead-ema: optimizer steps between its updates", at_least=1)
    lookahead_ema_start: float = _optim(
        0.0, "--lookahead-ema: epochs trained before the average starts, as a copy of the model", at_least=0
    )
    lookahead_ema_ramp: float = _optim(
        0.0,
        "--lookahead-ema: the decay is scaled by the share of training done to this power, so the average "
        "follows the model early and holds it late, e.g. 3 (0: a constant decay)",
        at_least=0,
    )
    schedule: str = _optim(
        "cosine",
        "learning-rate schedule after warmup; triangle (airbench's) rises from --triangle-start to the peak "
        "at --triangle-peak of training and falls to --min-lr-ratio at its end, in place of a warmup",
        choices=("cosine", "linear", "constant", "plateau", "triangle"),
        commands=("train",),
        card=7,
    )
    triangle_start: float = _optim(
        0.2, "triangle schedule: the rate at the first step, as a fraction of --lr", at_least=0, commands=("train",)
    )
    triangle_peak: float = _optim(
        0.23,
        "triangle schedule: where the rate peaks, as a fraction of the training steps",
        at_least=0,
        below=1,
        commands=("train",),
    )
    warmup_epochs: float = _optim(
        0.0, "linear warmup length in epochs (fractions allowed)", at_least=0, commands=("train",), card=8
    )
    min_lr_ratio: float = _optim(
        0.01, "cosine floor, and the triangle's last rate, as a fraction of --lr", at_least=0, commands=("train",)
    )
    plateau_factor: float = _optim(
        0.5,
        "plateau schedule: multiply the lr by this when the monitor stalls",
        above=0,
        at_most=1,
        commands=("train",),
    )
    plateau_patience: int = _optim(
        5, "plateau schedule: epochs without improvement before reducing", at_least=0, commands=("train",)
    )
    early_stopping: int = _optim(
        0,
        "stop after this many epochs without improvement; best weights kept (0: off)",
        at_least=0,
        commands=("train",),
    )
    monitor: str = _optim(
        "val_top1",
        "what best/, plateau and early stopping follow; multi-label runs follow val_map (macro mAP) for val_top1",
        choices=("val_top1", "val_loss", "val_map"),
        commands=("train",),
    )
    label_smoothing: float = _optim(
        0.0,
        "label smoothing in [0, 1); multi-label: each label's 0/1 target moves this much toward 0.5 and beyond, "
        "to 1 - s/2 and s/2",
        at_least=0,
        below=1,
        card=9,
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
    asl_gamma_neg: float = _optim(4.0, "asymmetric loss: focusing exponent of the negatives", at_least=0)
    asl_gamma_pos: float = _optim(0.0, "asymmetric loss: focusing exponent of the positives", at_least=0)
    asl_clip: float = _optim(0.05, "asymmetric loss: probability shift of the negatives (0: off)", at_least=0, below=1)
    mixup: float = _optim(0.0, "MixUp Beta alpha (0: off)", at_least=0, card=12)
    cutmix: float = _optim(0.0, "CutMix Beta alpha (0: off)", at_least=0, card=13)
    grad_clip: float = _optim(0.0, "max gradient norm (0: off)", at_least=0)
    accum_steps: int = _optim(1, "batches whose gradients add up to one optimizer step", at_least=1)
    micro_batch_size: int = _optim(
        0, "run each batch as chunks of this many images in one step (0: whole batch)", at_least=0
    )
    ema: float = _optim(
        0.0,
        "exponential moving average of the weights, decay per step, e.g. 0.999 (0: off)",
        at_least=0,
        below=1,
        commands=("train",),
        card=21,
    )
    amp: str = _optim(
        "auto", "bf16 autocast: auto uses it where the hardware has native bf16", choices=("auto", "bf16", "off")
    )
    compile: bool = _optim(False, "torch.compile the model (compile time is reported apart)")
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
    out: str | None = _run(None, "run folder (default: runs/<model>-<data>, numbered when taken)", commands=("train",))
    name: str | None = _run(None, "run name under runs/ when --out is not given", commands=("train",))
    resume: bool = _run(False, "continue the run in --out from its last checkpoint", commands=("train",))
    save_every: int = _run(
        0,
        "also write last/ every N optimizer steps (0: at epoch ends only)",
        at_least=0,
        resumable=True,
        commands=("train",),
    )
    save_every_minutes: float = _run(
        0.0,
        "also write last/ when this many minutes have passed since the last one (0: off); with --save-every, "
        "whichever comes first",
        at_least=0,
        resumable=True,
        commands=("train",),
    )
    max_restarts: int = _run(
        0,
        "with --nproc: restart the processes up to this many times when one fails; each restart continues "
        "from the latest last/ (runs under torchrun's elastic agent)",
        at_least=0,
        resumable=True,
        commands=("train",),
    )
    device: str = _run("auto", "auto, cpu, cuda or cuda:N", resumable=True)
    threads: int = _run(0, "torch CPU threads (0: every core)", at_least=0, resumable=True)
    workers: int = _run(
        -1,
        "decoding processes per training process for data streamed from disk; -1: the cores of this "
        "node shared among its training processes, less one for training (at least 1, at most 8); "
        "0: decode in the training process",
        at_least=-1,
        resumable=True,
    )
    progress: bool = _run(
        True, "progress bar on stderr (shown only when stderr is a terminal)", resumable=True, commands=("train",)
    )
    quiet: bool = _run(False, "no per-epoch lines on stderr (errors still print)", resumable=True, commands=("train",))
    plots: bool = _run(
        True,
        "draw the run folder's figures (training batch, curves, confusion matrix, predictions, patches); "
        "--no-plots for sweeps and scripts that read only the numbers",
        resumable=True,
        commands=("train",),
    )
    log: str | None = _run(
        None,
        "experiment trackers, comma-separated: tensorboard (event files in RUN/tensorboard/), mlflow "
        "($MLFLOW_TRACKING_URI, else a file store in RUN/mlruns); each logs the configuration and every "
        "epoch's metrics",
        resumable=True,
        commands=("train",),
    )

    budget_size: BudgetSize | None = _model(
        None,
        "the size --time-budget chose among the preset's (its model_args changes and each candidate's "
        "measured estimate), recorded by vitkit so that a resume or a repeat rebuilds it",
        commands=(),
    )

    def validate(self) -> "TrainConfig":
        check_options(self)
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and (not values or (name == "std" and min(values) <= 0)):
                raise VitkitError(
                    f"{flag(name)} needs one value per channel" + (", all positive" if name == "std" else "")
                )
        if self.alternate_flips and not self.hflip:
            raise VitkitError("--alternate-flips chooses which images --hflip mirrors: add --hflip")
        for name, epochs in self.freeze_after.items():
            if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
                raise VitkitError(f"--freeze-after {name}={epochs!r}: give the epochs as a whole number, 0 or more")
        if self.schedule == "triangle" and self.warmup_epochs:
            raise VitkitError(
                "--schedule triangle has its own warmup (--triangle-start, --triangle-peak): drop --warmup-epochs"
            )
        if self.nesterov and self.optimizer == "sgd" and self.momentum <= 0:
            raise VitkitError("--nesterov needs a positive --momentum")
        tracker_names(self.log)
        if self.labels is not None:
            if not Path(self.data).is_dir():
                raise VitkitError(f"--labels needs --data to be the folder its image paths are under, got {self.data}")
            if not Path(self.labels).is_file():
                raise MissingFile(f"--labels {self.labels}: no such file")
        if self.model:  # an unknown or mistyped --model-arg, refused before any work
            resolve_model_config(self.model, **self.model_args)
        if self.data not in BUILTIN and not self.data.startswith(HUB_PREFIX) and not Path(self.data).exists():
            close = difflib.get_close_matches(self.data, list(BUILTIN), n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise MissingFile(
                f"--data {self.data} does not exist: no such folder, and not a built-in dataset.{hint} "
                f"Built-in: {', '.join(BUILTIN)}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The values as plain data (args.yaml, a checkpoint's train_config); a record such as budget_size
        as its own `to_dict` writes it."""
        values = dataclasses.asdict(self)
        return {k: v.to_dict() if dataclasses.is_dataclass(v := getattr(self, k)) else values[k] for k in values}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """A configuration from complete values (args.yaml of any vitkit version), validated; a model left
        to a preset or the default (args.yaml before configurations were resolved) is filled in."""
        check_known(values, cls, "training configuration")
        return cls(**typed_values(values, cls)).resolved()

    def resolved(self) -> "TrainConfig":
        """This configuration validated, with a model left to a preset or the default filled in (the
        preset's model arguments under those given)."""
        if self.model or (self.pretrained and not self.preset):
            return self.validate()
        preset = get_preset(self.preset) if self.preset else None
        model_args = {**(preset.model_args if preset else {}), **self.model_args}
        model = preset.model if preset else DEFAULT_MODEL
        return dataclasses.replace(self, model=model, model_args=model_args).validate()


# What `--resume` may change (how the rest of the run executes, never what it computes) and what a
# learning-rate sweep does not take: both declared with the options.
RESUMABLE = names_where(TrainConfig, resumable=True)
LR_FIND_OPTIONS = for_command(TrainConfig, "lr-find")
# The options given as repeatable KEY=VALUE flags (--model-arg, --freeze-after): mappings of names to values.
MAPPING_OPTIONS = tuple(
    name for name, kind in typing.get_type_hints(TrainConfig).items() if typing.get_origin(kind) is dict
)


# Where a run goes, not what it computes: never recorded in args.yaml, and ignored in a --config file
# (args.yaml of earlier versions has them), so that `--config args.yaml --out NEW` repeats a run.
NOT_RECORDED = ("out", "resume")


def explicit_values(config_file: str | Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    """What the user asked for: a YAML config file's values (but where the run goes) under the flags."""
    from_file = read_yaml_options(config_file, TrainConfig) if config_file else {}
    return {**{k: v for k, v in from_file.items() if k not in NOT_RECORDED}, **flags}
