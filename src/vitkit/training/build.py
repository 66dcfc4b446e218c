"""Everything a run is made of, built from its configuration: runtime, data, model, normalisation,
augmentation and loaders. Nothing here trains."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..data.augment import AugmentSpec, BatchAugment
from ..data.balance import balanced_class_weights, balanced_sample_weights
from ..data.loader import BatchLoader, resolve_workers
from ..data.prepare import DataOptions, normalization, prepare_data
from ..data.preprocess import Preprocessing, run_preprocessing
from ..data.splits import Dataset
from ..errors import VitkitError
from ..models import create_model
from ..models.naming import model_label
from ..options import part_of
from ..pretrained.result import Pretrained
from ..runtime import resolve_device, setup_threads, use_bf16
from .config import TrainConfig
from .distributed import DistContext, init_distributed
from .losses import positive_weights
from .optim import build_optimizer, param_groups
from .resolve import size_pending, with_budget_size
from .sizing import BudgetSize, choose_size, loading_seconds, training_rate


@dataclass
class Runtime:
    device: torch.device
    ctx: DistContext
    bf16: bool
    global_batch: int | None = None  # a resumed run's own, kept whatever the world size now (elastic.py)

    @classmethod
    def create(cls, cfg: TrainConfig) -> "Runtime":
        """Device, process group (under torchrun) and precision; one GPU per process."""
        device = resolve_device(cfg.device)
        ctx = init_distributed(device.type)
        if ctx.enabled and device.type == "cuda":
            device = torch.device("cuda", ctx.local_rank)
        setup_threads(cfg.threads)
        return cls(device, ctx, use_bf16(cfg.amp, device))


@dataclass(kw_only=True)
class Setup:
    data: Dataset
    bad_images: list[str]
    model: nn.Module
    model_name: str
    image_size: int
    augment: BatchAugment
    train_loader: BatchLoader
    val_loader: BatchLoader
    eval_loader: BatchLoader  # the split the final metrics are reported on
    eval_split: str  # "test", or "val" when the data has no test split
    local_batch: int
    global_batch: int
    preprocessing: Preprocessing  # what the checkpoint records and inference repeats
    class_weights: torch.Tensor | None = None  # of the training loss (multi-label: of positives), on the device
    size_note: str = ""  # why the input has its size, when it was decided here (fine-tuning, photos)

    @property
    def split_selected_checkpoint(self) -> bool:
        """The reported split is the validation split, which also chose best/: its numbers are optimistic."""
        return self.eval_split == "val"

    def run_info(self, world_size: int, device: torch.device, budget_size: BudgetSize | None) -> dict:
        """How the run executes, for run.json (`budget_size`: the configuration's record of a --time-budget
        size choice)."""
        return {
            "world_size": world_size,
            "global_batch_size": self.global_batch,
            "per_device_batch_size": self.local_batch,
            "device": str(device),
            "data_streamed": not self.data.train.in_memory,
            "loader_workers": self.train_loader.workers,
            **({"budget_size": budget_size.to_dict()} if budget_size else {}),
        }


def batch_sizes(cfg: TrainConfig, world_size: int, train_images: int, kept: int | None = None) -> tuple[int, int]:
    """(per-process batch, global batch) of --batch-size and --batch-scope across `world_size` processes;
    a resumed run `kept` its global batch, split across the processes it has now."""
    if kept and kept % world_size:
        raise VitkitError(
            f"the run's global batch of {kept} does not divide across {world_size} processes: continue it with a "
            f"number of processes that divides {kept}"
        )
    if kept:
        return kept // world_size, kept
    if cfg.batch_scope == "global" and cfg.batch_size % world_size:
        raise VitkitError(
            f"--batch-size {cfg.batch_size} (global) does not divide across {world_size} processes: "
            f"use a multiple of {world_size}, or --batch-scope device for a per-process batch"
        )
    local_batch = cfg.batch_size // world_size if cfg.batch_scope == "global" else cfg.batch_size
    global_batch = local_batch * world_size
    if global_batch > train_images:
        raise VitkitError(
            f"the global batch of {global_batch} is larger than the {train_images} training images: lower --batch-size"
        )
    return local_batch, global_batch


def build(cfg: TrainConfig, runtime: Runtime, budget=None) -> tuple[TrainConfig, Setup]:
    """The run's parts from a resolved configuration; `budget` (the command's TimeBudget) tells the size
    probe how much time is left. A size still to be chosen for --time-budget is chosen here, once the data
    is ready: returns the configuration as built (with that choice recorded) beside the parts."""
    pretrained = None
    if cfg.pretrained:
        from ..pretrained import load_pretrained

        pretrained = load_pretrained(cfg.pretrained, num_heads=cfg.model_args.get("num_heads"))
    image_size, size_note = input_size(cfg, pretrained)
    source = pretrained.preprocessing if pretrained else None
    decode = run_preprocessing(image_size, source, cfg.resize_mode, cfg.crop_pct, cfg.resample)
    data, bad_images = prepare_data(part_of(DataOptions, cfg), decode)
    if data.num_classes < 2:
        raise VitkitError(
            f"--data {cfg.data} has {data.num_classes} class ({', '.join(data.class_names)}): a classifier "
            "needs at least two class folders"
        )
    ctx = runtime.ctx
    local_batch, global_batch = batch_sizes(cfg, ctx.world_size, len(data.train), runtime.global_batch)

    def new_model(model_args: dict) -> nn.Module:
        torch.manual_seed(cfg.seed)
        if pretrained:
            return adapt_pretrained(pretrained, image_size=image_size, class_names=data.class_names)
        in_chans = model_args.get("in_chans") or (1 if data.channels == 1 else 3)
        run_args = dict(num_classes=data.num_classes, image_size=image_size, in_chans=in_chans)
        model = create_model(cfg.model, **{**model_args, **run_args})  # the run's data decides these
        return model.to(runtime.device)

    if size_pending(cfg):
        minutes_left = (budget.seconds - budget.elapsed()) / 60 if budget else cfg.time_budget
        size = choose_budget_size(cfg, runtime, new_model, local_batch, decode, data, minutes_left)
        cfg = with_budget_size(cfg, size)
    model = new_model(cfg.model_args)
    channels = model.config.in_chans
    workers = resolve_workers(cfg.workers)
    if pretrained and cfg.mean is None:
        mean, std = pretrained.preprocessing.mean, pretrained.preprocessing.std
    elif cfg.mean is not None and cfg.std is not None:
        mean, std = tuple(cfg.mean), tuple(cfg.std)
    else:
        mean, std = normalization(cfg.normalize, data.train, channels, workers)
    preprocessing = dataclasses.replace(
        decode, mean=mean, std=std, channels=channels, decode_size=data.train.stored_size
    )
    augment = preprocessing.batch_augment(part_of(AugmentSpec, cfg))
    if cfg.whiten_init and not cfg.resume and not pretrained:  # resumed and pretrained runs load their weights
        whiten_first_conv(model, data.train, augment, runtime.device, cfg.seed)

    common = dict(device=runtime.device, rank=ctx.rank, world_size=ctx.world_size, workers=workers)
    labels = data.train.labels
    if data.multi_label and cfg.sampler == "balanced":
        raise VitkitError(
            "--sampler balanced draws every class equally, which label sets do not allow: for multi-label data "
            "use --class-weights balanced (weights each label's positives) or --multilabel-loss asymmetric"
        )
    sample_weights = balanced_sample_weights(labels, data.num_classes) if cfg.sampler == "balanced" else None
    train_loader = BatchLoader(
        data.train,
        local_batch,
        shuffle=True,
        seed=cfg.seed,
        drop_last=cfg.drop_last,
        sample_weights=sample_weights,
        **common,
    )
    class_weights = None
    if cfg.class_weights == "balanced":
        weights = positive_weights(labels) if data.multi_label else balanced_class_weights(labels, data.num_classes)
        class_weights = weights.to(runtime.device)
    val_loader = BatchLoader(data.val, cfg.eval_batch_size, shuffle=False, **common)
    eval_split = "test" if data.test is not None else "val"
    eval_loader = (
        BatchLoader(data.test, cfg.eval_batch_size, shuffle=False, **common) if data.test is not None else val_loader
    )
    return cfg, Setup(
        data=data,
        bad_images=bad_images,
        model=model,
        model_name=model_label(**cfg.to_dict()),
        image_size=image_size,
        augment=augment,
        train_loader=train_loader,
        val_loader=val_loader,
        eval_loader=eval_loader,
        eval_split=eval_split,
        local_batch=local_batch,
        global_batch=global_batch,
        preprocessing=preprocessing,
        class_weights=class_weights,
        size_note=size_note,
    )


# Photos fine-tuned from a checkpoint trained on smaller images start at the folder recipes' size: the
# checkpoint's size is where its weights were tuned, not a ceiling (position embeddings are interpolated,
# convolutional stems take any size), and 32 px thumbnails of photos lose what tells classes apart.
PHOTO_INPUT_SIZE = 64


def input_size(cfg: TrainConfig, pretrained: Pretrained | None) -> tuple[int, str]:
    """The model's input size and, when decided here rather than asked for, why."""
    if cfg.image_size:
        return cfg.image_size, ""
    if not pretrained:
        return cfg.model_args.get("image_size") or 32, ""
    from ..data.prepare import typical_side

    start = pretrained.preprocessing.image_size
    side = typical_side(cfg.data)
    if side is None or side < 2 * start or start >= PHOTO_INPUT_SIZE:
        seen = f"the images are about {side} px" if side else "the images' size is not known before decoding"
        return start, f"input size {start} px: the checkpoint's own ({seen}); --image-size changes it"
    tokenizer = getattr(pretrained.model, "patch_embed", None)
    stride = getattr(tokenizer, "stride", 1)
    size = max(start, min(PHOTO_INPUT_SIZE, side) // stride * stride)
    return size, (
        f"input size {size} px: the checkpoint was trained at {start} px and the photos are about {side} px, so "
        f"they are not shrunk to {start} px thumbnails; its position embeddings are interpolated to the larger "
        "token grid (--image-size changes it)"
    )


# Training images whose 2x2 or 3x3 patches the whitening covariance is estimated from: tens of millions
# of patches of a few dozen dimensions, as in airbench, and a second's decoding of a streamed folder.
WHITENING_IMAGES = 5000


def whitening_indices(size: int, seed: int) -> torch.Tensor:
    """Which of a split's `size` images the whitening sees: a seeded random sample of the whole split
    (its first images would be a class or two of a folder, whose splits are in class order)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(size, generator=generator)[:WHITENING_IMAGES].sort().values


def whiten_first_conv(model: nn.Module, split, augment: BatchAugment, device: torch.device, seed: int) -> None:
    """The model's first convolution set to whiten the patches of a seeded sample of the training
    images (`whitening_indices`), as the model sees them (normalised, at its input size)."""
    loader = BatchLoader(split.subset(whitening_indices(len(split), seed)), 500, shuffle=False, device=device)
    model.init_whitening(torch.cat([augment.for_inference(images) for images, _ in loader.batches()]))


def choose_budget_size(
    cfg: TrainConfig, runtime: Runtime, new_model, batch: int, decode: Preprocessing, data: Dataset, minutes_left: float
) -> BudgetSize:
    """The preset size for this --time-budget on this machine (training/sizing.py), from real training
    steps on a batch of the run's own images with its augmentation and optimizer, plus their measured
    loading time (which dominates on streamed photos): measured by rank 0 and shared, so every process
    builds the same model."""
    record = None
    if runtime.ctx.is_main:
        loader = BatchLoader(
            data.train, batch, shuffle=True, seed=cfg.seed, device=runtime.device, workers=resolve_workers(cfg.workers)
        )
        loading_s = loading_seconds(loader.batches())
        images, labels = next(loader.batches())
        channels = 1 if data.channels == 1 else 3
        # the normalisation statistics are not computed yet; their values do not change the augmentation's cost
        probe = dataclasses.replace(decode, channels=channels, decode_size=data.train.stored_size)
        augment = probe.batch_augment(part_of(AugmentSpec, cfg))
        gen = torch.Generator(device=runtime.device).manual_seed(cfg.seed)
        targets = labels.float() if data.multi_label else labels

        def rate_of(size: dict) -> float:
            model = new_model({**cfg.model_args, **size})
            groups = param_groups(model, cfg.weight_decay, cfg.layer_decay)
            optimizer = build_optimizer(
                model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, groups, cfg.nesterov
            )
            return training_rate(
                model,
                optimizer,
                images,
                targets,
                lambda x: augment.for_training(x, gen),
                runtime.device,
                runtime.bf16,
                cfg.channels_last,
                loading_s,
            )

        record = choose_size(cfg.budget_size.candidates, rate_of, minutes_left, len(data.train))
    return runtime.ctx.broadcast_object(record)


def adapt_pretrained(pretrained: Pretrained, *, image_size: int, class_names: list) -> nn.Module:
    """Fit a pretrained model to this run: resolution (position embeddings interpolated) and head
    (kept when the classes are the same, otherwise a new one)."""
    model = pretrained.model
    model.set_image_size(image_size)
    same_classes = (
        pretrained.has_head and pretrained.class_names is not None and list(pretrained.class_names) == list(class_names)
    )
    if not same_classes:
        model.reset_classifier(len(class_names))
    return model
