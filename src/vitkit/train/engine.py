"""The training engine: one call turns a TrainConfig into a run folder.

run folder/
  args.yaml            resolved configuration (every value, presets expanded)
  run.json             status: running | complete | failed (with the reason)
  metrics.csv          one row per epoch
  results.json         test metrics of the best checkpoint
  best/ last/          checkpoints (safetensors + config.json; last/ adds trainer.pt for --resume)
  curves.png confusion_matrix.png predictions.png patches.png
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..data.augment import IMAGENET_MEAN, IMAGENET_STD, AugmentSpec, BatchAugment, mix_batch, to_channels
from ..data.builtin import BUILTIN, Dataset, Split, load_builtin
from ..data.folder import FileSplit, load_folder, stratified_split
from ..data.loader import BatchLoader, epoch_seed
from ..data.preprocess import Preprocessing, run_preprocessing
from ..eval.metrics import MetricAccumulator
from ..fileio import atomic_path, write_json
from ..models import count_parameters, create_model, get_preset, save_model
from ..models.io import load_model
from .config import TrainConfig
from .distributed import DistContext, init_distributed, shutdown
from .optim import Plateau, build_optimizer, lr_factor, param_groups

TRAINER_STATE = "trainer.pt"
DEFAULT_MODEL = "vit_micro_patch4_32"
FIRST_PLAN_STEPS = 20  # with a time budget, optimizer steps timed before the schedule is first fitted


# ----------------------------------------------------------------------------- runtime


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available; use --device cpu")
    return device


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix instructions in hardware. Without them bf16 is emulated and
    slower than fp32, so 'auto' must not pick it."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(amp: str, device: torch.device) -> bool:
    """bf16 autocast where the hardware has fast bf16 (measured on an AVX512-BF16 CPU: training 1.5x,
    inference 2.1x the fp32 images/s): CUDA GPUs that support it, CPUs with native bf16."""
    if amp == "bf16":
        return True
    if amp != "auto":
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def setup_threads(threads: int) -> None:
    torch.set_num_threads(threads or os.cpu_count() or 1)


# ----------------------------------------------------------------------------- data


def _limit(split: Split | FileSplit, limit: int, seed: int):
    if not limit or limit >= len(split):
        return split
    _, keep = stratified_split(split.labels, limit / len(split), seed)
    return split.subset(keep)


def prepare_data(cfg: TrainConfig, preprocessing: Preprocessing) -> tuple[Dataset, list[str]]:
    """Load the dataset with a validation split (held out of train when it has none) and limits; image
    folders are decoded with `preprocessing`, built-in datasets come at their native size."""
    if cfg.data in BUILTIN:
        data, bad = load_builtin(cfg.data, cfg.data_dir, cfg.seed), []
    else:
        data, bad = load_folder(cfg.data, preprocessing, skip_bad=cfg.skip_bad_images, data_dir=cfg.data_dir)
    data.train = _limit(data.train, cfg.train_limit, cfg.seed)
    if data.test is not None:
        data.test = _limit(data.test, cfg.test_limit, cfg.seed)
    if data.val is None:
        keep, held = stratified_split(data.train.labels, cfg.val_split, cfg.seed)
        data.train, data.val = data.train.subset(keep), data.train.subset(held)
    return data, bad


def channel_stats(split: Split | FileSplit, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of the training images (the Keras Normalization layer's adapt)."""
    if isinstance(split, FileSplit):  # streamed folders: ImageNet statistics, not a full pass
        return (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
    x = split.images[:20000].float().div(255)
    x = to_channels(x, channels)
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist())


def normalization(cfg: TrainConfig, train: Split | FileSplit, channels: int):
    if cfg.mean is not None and cfg.std is not None:
        return tuple(cfg.mean), tuple(cfg.std)
    if cfg.normalize == "fit":
        return channel_stats(train, channels)
    if cfg.normalize == "imagenet":
        return (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.449,), (0.226,))
    if cfg.normalize == "half":
        return (0.5,) * channels, (0.5,) * channels
    return (0.0,) * channels, (1.0,) * channels


def augment_spec(cfg: TrainConfig) -> AugmentSpec:
    return AugmentSpec(
        hflip=cfg.hflip,
        rotation=cfg.rotation,
        zoom=cfg.zoom,
        crop_padding=cfg.crop_padding,
        rrc_scale=cfg.rrc_scale,
        auto_augment=cfg.auto_augment,
        ra_num_ops=cfg.ra_num_ops,
        ra_magnitude=cfg.ra_magnitude,
        random_erasing=cfg.random_erasing,
    )


# ----------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def evaluate_loader(
    model: nn.Module, loader: BatchLoader, augment: BatchAugment, num_classes: int, ctx: DistContext | None = None
) -> MetricAccumulator:
    """Loss, top-k and confusion matrix over a loader (summed across ranks when distributed).
    Always fp32, whatever the training precision, so `vitkit eval` reproduces every reported metric."""
    model.eval()
    acc = MetricAccumulator(num_classes)
    for images, labels in loader.batches():
        logits = model(augment.eval(images)).float()
        acc.update(logits, labels, F.cross_entropy(logits, labels, reduction="sum").item())
    if ctx is not None and ctx.enabled:
        acc.load_tensor(ctx.all_reduce_sum(acc.as_tensor()))
    return acc


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_metadata(cfg: TrainConfig, class_names, preprocessing: Preprocessing) -> dict:
    """What a checkpoint needs to be used on new images: its class names and the preprocessing that
    training used (see data/preprocess.py), which inference repeats."""
    return {
        "class_names": list(class_names),
        "preprocessing": preprocessing.to_dict(),
        "train_config": cfg.to_dict(),
    }


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written folder into place; at every moment either the old or the new one exists."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def find_last(run_dir: Path) -> Path | None:
    for candidate in (run_dir / "last", run_dir / "last.old"):
        if (candidate / TRAINER_STATE).is_file():
            return candidate
    return None


# ----------------------------------------------------------------------------- the run


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.ctx = init_distributed(self.device.type)
        if self.ctx.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.ctx.local_rank)
        setup_threads(cfg.threads)
        self.bf16 = use_bf16(cfg.amp, self.device)

    # -- set-up ---------------------------------------------------------------------------
    def _model_name(self) -> str:
        return self.cfg.model or self.cfg.preset or DEFAULT_MODEL

    def _run_dir(self) -> Path:
        cfg = self.cfg
        if cfg.out:
            out = Path(cfg.out)
            if not cfg.resume and out.exists() and any(out.iterdir()):
                raise ValueError(
                    f"run folder {out} already holds a run: pass --resume to continue it, or choose another --out"
                )
            return out
        base = Path("runs") / (cfg.name or f"{self._model_name()}-{Path(cfg.data).name}")
        if cfg.resume:
            return base
        out, i = base, 2
        while out.exists():
            out, i = base.with_name(f"{base.name}-{i}"), i + 1
        return out

    def setup(self) -> None:
        cfg = self.cfg
        name = self._model_name()
        preset_model = get_preset(cfg.preset).model_args if cfg.preset and not cfg.model else {}
        pretrained = None
        if cfg.pretrained:
            from ..pretrained import load_pretrained

            pretrained = load_pretrained(cfg.pretrained, num_heads=cfg.model_args.get("num_heads"))
        self.image_size = (
            cfg.image_size
            or (pretrained.preprocessing.image_size if pretrained else None)
            or preset_model.get("image_size")
            or 32
        )
        source = pretrained.preprocessing if pretrained else None
        decode = run_preprocessing(self.image_size, source, cfg.resize_mode, cfg.crop_pct, cfg.resample)
        self.data, self.bad_images = prepare_data(cfg, decode)
        if pretrained:
            self.model = self.adapt_pretrained(pretrained)
        else:
            in_chans = (
                preset_model.get("in_chans") or cfg.model_args.get("in_chans") or (1 if self.data.channels == 1 else 3)
            )
            self.model = self.build_model(name, in_chans)
        self.channels = self.model.config.in_chans
        if pretrained and cfg.mean is None:
            self.mean, self.std = pretrained.preprocessing.mean, pretrained.preprocessing.std
        else:
            self.mean, self.std = normalization(cfg, self.data.train, self.channels)
        train = self.data.train
        self.preprocessing = dataclasses.replace(
            decode,
            mean=self.mean,
            std=self.std,
            channels=self.channels,
            decode_size=train.preprocessing.square_size if isinstance(train, FileSplit) else train.images.shape[-1],
        )
        self.augment = self.preprocessing.batch_augment(augment_spec(cfg))
        rank, world = self.ctx.rank, self.ctx.world_size
        if cfg.batch_scope == "global" and cfg.batch_size % world:
            raise ValueError(
                f"--batch-size {cfg.batch_size} (global) does not divide across {world} processes: "
                f"use a multiple of {world}, or --batch-scope device for a per-process batch"
            )
        self.local_batch = cfg.batch_size // world if cfg.batch_scope == "global" else cfg.batch_size
        self.global_batch = self.local_batch * world
        if self.global_batch > len(self.data.train):
            raise ValueError(
                f"the global batch of {self.global_batch} is larger than the {len(self.data.train)} "
                "training images: lower --batch-size"
            )
        common = dict(device=self.device, rank=rank, world_size=world, workers=cfg.workers)
        self.train_loader = BatchLoader(
            self.data.train, self.local_batch, shuffle=True, seed=cfg.seed, drop_last=True, **common
        )
        self.val_loader = BatchLoader(self.data.val, cfg.eval_batch_size, shuffle=False, **common)
        test = self.data.test if self.data.test is not None else self.data.val
        self.test_split_name = "test" if self.data.test is not None else "val"
        self.test_loader = BatchLoader(test, cfg.eval_batch_size, shuffle=False, **common)

    def build_model(self, name: str, in_chans: int) -> nn.Module:
        torch.manual_seed(self.cfg.seed)
        args = {k: v for k, v in self.cfg.model_args.items() if k not in ("num_classes", "image_size", "in_chans")}
        model = create_model(
            name, num_classes=self.data.num_classes, image_size=self.image_size, in_chans=in_chans, **args
        )
        return model.to(self.device)

    def adapt_pretrained(self, pretrained) -> nn.Module:
        """Fit a pretrained model to this run: resolution (position embeddings interpolated) and head
        (kept when the classes are the same, otherwise a new one)."""
        model = pretrained.model
        model.set_image_size(self.image_size)
        same_classes = (
            pretrained.has_head
            and pretrained.class_names is not None
            and list(pretrained.class_names) == list(self.data.class_names)
        )
        if not same_classes:
            torch.manual_seed(self.cfg.seed)
            head = model.head[-1]
            model.head[-1] = nn.Linear(head.in_features, self.data.num_classes)
            nn.init.trunc_normal_(model.head[-1].weight, std=0.02)
            nn.init.zeros_(model.head[-1].bias)
            model.config.num_classes = self.data.num_classes
        return model.to(self.device)

    def _optimizer(self):
        cfg = self.cfg
        head_scale = cfg.head_lr / cfg.lr if cfg.head_lr else 1.0
        groups = param_groups(self.model, cfg.weight_decay, cfg.layer_decay, head_scale, cfg.freeze_backbone)
        return build_optimizer(self.model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, groups)

    # -- checkpointing --------------------------------------------------------------------
    def _meta(self) -> dict:
        return checkpoint_metadata(self.cfg, self.data.class_names, self.preprocessing)

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def save_best(self) -> None:
        if self.ctx.is_main:
            tmp = self.run_dir / "best.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            save_model(self.eval_model(), tmp, **self._meta())
            replace_dir(tmp, self.run_dir / "best")

    def save_last(self, epoch: int, next_batch: int) -> None:
        """Every rank contributes its RNG states (augmentation is seeded per rank); rank 0 writes."""
        rng = {
            "torch_rng": torch.get_rng_state(),
            "aug_rng": self.aug_gen.get_state().cpu(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        rank_rngs = self.ctx.all_gather_object(rng)
        if not self.ctx.is_main:
            return
        tmp = self.run_dir / "last.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(self.model, tmp, **self._meta())
        state = {
            "epoch": epoch,
            "next_batch": next_batch,
            "step": self.step,
            "world_size": self.ctx.world_size,
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rank_rngs": rank_rngs,
            "global_batch": self.global_batch,
            "plateau": self.plateau.state_dict(),
            "stopper": self.stopper.state_dict(),
            "history": self.history,
            "best_epoch": self.best_epoch,
            "elapsed": self._elapsed(),
            "planned_steps": self.planned_steps,
        }
        with atomic_path(tmp / TRAINER_STATE) as path:
            torch.save(state, path)
        replace_dir(tmp, self.run_dir / "last")

    def load_last(self) -> tuple[int, int]:
        last = find_last(self.run_dir)
        if last is None:
            raise FileNotFoundError(
                f"nothing to resume in {self.run_dir}: no last/{TRAINER_STATE} "
                "(the run never finished a checkpoint); start it again without --resume"
            )
        state = torch.load(last / TRAINER_STATE, map_location="cpu", weights_only=True)
        if state["world_size"] != self.ctx.world_size:
            raise ValueError(
                f"{self.run_dir} was trained with {state['world_size']} process(es) but is resumed "
                f"with {self.ctx.world_size}: resume with --nproc {state['world_size']} so the batches "
                "and results match"
            )
        model, _ = load_model(last)
        self.model.load_state_dict(model.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.step, self.history, self.best_epoch = state["step"], state["history"], state["best_epoch"]
        self.plateau.load_state_dict(state["plateau"])
        self.stopper.load_state_dict(state["stopper"])
        self.elapsed_before = state["elapsed"]
        self.planned_steps = state["planned_steps"]
        rng = state["rank_rngs"][self.ctx.rank]
        torch.set_rng_state(rng["torch_rng"])
        self.aug_gen.set_state(rng["aug_rng"])
        if rng["cuda_rng"] is not None:
            torch.cuda.set_rng_state(rng["cuda_rng"], self.device)
        return state["epoch"], state["next_batch"]

    # -- loop -----------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def _set_lr(self) -> float:
        cfg = self.cfg
        warmup = int(cfg.warmup_epochs * self.steps_per_epoch)
        factor = lr_factor(self.step, self.planned_steps, warmup, cfg.schedule, cfg.min_lr_ratio)
        factor *= self.plateau.scale
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * group.get("lr_scale", 1.0) * factor
        return cfg.lr * factor

    def _seed_epoch(self, epoch: int) -> None:
        torch.manual_seed(epoch_seed(self.cfg.seed, epoch, 1))
        self.aug_gen.manual_seed(epoch_seed(self.cfg.seed, epoch, 2 + self.ctx.rank))

    def train_step(self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor, boundary: bool = True):
        """Augment a uint8 batch on the device, then one model step."""
        cfg = self.cfg
        x = self.augment.train(images, self.aug_gen)
        x, targets = mix_batch(
            x, labels, self.data.num_classes, cfg.mixup, cfg.cutmix, cfg.label_smoothing, self.aug_gen
        )
        return self.model_step(net, x, targets, boundary)

    def model_step(self, net: nn.Module, x: torch.Tensor, targets: torch.Tensor, boundary: bool = True):
        """Forward, backward and (at accumulation boundaries) the optimizer update.

        With `micro_batch_size` the batch goes through in chunks whose gradients add up to the whole
        batch's: the same update, but activations small enough to stay in cache (measured 2.6x on the
        Keras ViT at batch 256 on a 2-core CPU)."""
        cfg = self.cfg
        size = cfg.micro_batch_size if 0 < cfg.micro_batch_size < x.shape[0] else x.shape[0]
        chunks = list(zip(x.split(size), targets.split(size)))
        all_logits, loss = [], torch.zeros((), device=x.device)
        for i, (x_part, target_part) in enumerate(chunks):
            final = boundary and i == len(chunks) - 1  # DDP all-reduces gradients once, on the last chunk
            sync = contextlib.nullcontext() if final or not self.ctx.enabled else net.no_sync()
            with sync:
                with autocast(self.device, self.bf16):
                    logits = net(x_part).float()
                part = F.cross_entropy(logits, target_part) * (x_part.shape[0] / x.shape[0])
                (part / cfg.accum_steps).backward()
            all_logits.append(logits.detach())
            loss = loss + part.detach()
        logits = torch.cat(all_logits)
        if boundary:
            self._last_lr = self._set_lr()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.step += 1
        return logits, loss

    def train_epoch(self, epoch: int, start_batch: int, net: nn.Module) -> dict:
        cfg = self.cfg
        net.train()
        acc = MetricAccumulator(self.data.num_classes)
        seen, t_start = 0, time.perf_counter()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=start_batch,
            desc=f"epoch {epoch + 1}",
            leave=False,
            disable=not (cfg.progress and self.ctx.is_main),
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self._last_lr = self._set_lr()
        for b, (images, labels) in enumerate(self.train_loader.batches(epoch, start_batch), start=start_batch):
            boundary = (b + 1) % cfg.accum_steps == 0 or b + 1 == self.steps_per_epoch
            logits, loss = self.train_step(net, images, labels, boundary)
            with torch.no_grad():
                acc.update(logits.detach(), labels, loss.item() * labels.shape[0])
            seen += labels.shape[0]
            rate = seen * self.ctx.world_size / max(time.perf_counter() - t_start, 1e-9)
            bar.set_postfix(
                loss=f"{acc.loss_sum / acc.count:.3f}",
                acc=f"{acc.confusion.diag().sum() / acc.count:.3f}",
                lr=f"{self._last_lr:.2e}",
                img_s=f"{rate:.0f}",
                refresh=False,
            )
            bar.update(1)
            if boundary and not self.history and self.step == FIRST_PLAN_STEPS:
                self._plan()  # a first estimate, so the decay does not end with the first epoch
            if boundary and cfg.save_every and self.step % cfg.save_every == 0 and b + 1 < self.steps_per_epoch:
                self.save_last(epoch, b + 1)
            if cfg.time_budget and self.ctx.any(self._elapsed() > cfg.time_budget * 60):
                break
        bar.close()
        if self.ctx.enabled:
            acc.load_tensor(self.ctx.all_reduce_sum(acc.as_tensor()))
        train = acc.compute()
        return {
            "train_loss": train["loss"],
            "train_top1": train["top1"],
            "train_top5": train["top5"],
            "lr": self._last_lr,
            "images_per_s": seen * self.ctx.world_size / max(time.perf_counter() - t_start, 1e-9),
        }

    def _plan(self) -> None:
        """With a time budget, refit the schedule length to the time left (eval time included). Every
        rank follows rank 0's clock so that their learning rates agree."""
        if not self.cfg.time_budget or self.step == 0:
            return
        per_step = self._elapsed() / self.step
        remaining = max(0.0, self.cfg.time_budget * 60 - self._elapsed())
        self.planned_steps = self.ctx.broadcast_object(self.step + int(remaining / per_step))

    def init_optimization(self) -> int:
        """Optimizer, EMA, generators and schedule bookkeeping; returns the number of epochs to run."""
        cfg = self.cfg
        self.optimizer = self._optimizer()
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
        )
        self.aug_gen = torch.Generator(device=self.device)
        mode = "min" if cfg.monitor == "val_loss" else "max"
        self.plateau = Plateau(mode, cfg.plateau_factor, cfg.plateau_patience)
        self.stopper = Plateau(mode, patience=cfg.early_stopping)
        self.steps_per_epoch = len(self.train_loader)
        # With a time budget the length is unknown until steps have been timed (see _plan); until then
        # the schedule holds its peak.
        epochs = 10**6 if cfg.time_budget else cfg.epochs
        self.planned_steps = math.ceil(self.steps_per_epoch / cfg.accum_steps) * epochs
        self.step, self.history, self.best_epoch, self.elapsed_before = 0, [], -1, 0.0
        self.t0 = time.perf_counter()
        self._last_lr = self._set_lr()
        return epochs

    def wrap_model(self) -> nn.Module:
        """DDP across processes and torch.compile when asked; the raw model keeps the weights."""
        net = self.model
        if self.ctx.enabled:
            net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if self.cfg.compile:
            net = torch.compile(net)
        return net

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.setup()
        if self.ctx.is_main:
            self.run_dir = self._run_dir()
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = Path(self.ctx.broadcast_object(str(self.run_dir) if self.ctx.is_main else None))
        epochs = self.init_optimization()
        start_epoch, start_batch = 0, 0
        if cfg.resume:
            start_epoch, start_batch = self.load_last()
        self.t0 = time.perf_counter()
        if self.ctx.is_main:
            self._write_run_files(status="running")
        net = self.wrap_model()
        try:
            for epoch in range(start_epoch, epochs):
                if start_batch == 0 or epoch != start_epoch:
                    self._seed_epoch(epoch)
                row = {"epoch": epoch + 1, **self.train_epoch(epoch, start_batch if epoch == start_epoch else 0, net)}
                val = evaluate_loader(
                    self.eval_model(), self.val_loader, self.augment, self.data.num_classes, self.ctx
                ).compute()
                row.update(
                    val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"], time_s=round(self._elapsed(), 2)
                )
                self.history.append(row)
                monitored = row[cfg.monitor]
                if self.stopper.step(monitored):
                    self.best_epoch = epoch + 1
                    self.save_best()
                if cfg.schedule == "plateau":
                    self.plateau.step(monitored)
                    self.plateau.reduce_if_stalled()
                self._plan()
                self.save_last(epoch + 1, 0)
                if self.ctx.is_main:
                    self._write_metrics()
                    self._log(row)
                if cfg.early_stopping and self.stopper.wait >= cfg.early_stopping:
                    self._print(f"early stopping: no {cfg.monitor} improvement for {cfg.early_stopping} epochs")
                    break
                if cfg.time_budget:
                    epoch_time = self._elapsed() / max(1, len(self.history))
                    if self.ctx.any(self._elapsed() + 0.5 * epoch_time > cfg.time_budget * 60):
                        break
            results = self.finish()
        except BaseException as e:
            if self.ctx.is_main:
                reason = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
                self._write_run_files(status="failed", error=reason)
                print(
                    f"run folder {self.run_dir} is incomplete ({reason}); continue it with "
                    f"`vitkit train --out {self.run_dir} --resume`",
                    file=sys.stderr,
                )
            raise
        finally:
            shutdown(self.ctx)
        return results

    def finish(self) -> dict[str, Any]:
        """Evaluate the best checkpoint on the test split (validation when there is none), write
        results.json and the plots."""
        from ..viz.report import write_report

        best_model = load_model(self.run_dir / "best")[0] if self.ctx.is_main else self.eval_model()
        best_model = best_model.to(self.device)
        if self.ctx.enabled:  # every rank evaluates its shard of the test set with rank 0's best weights
            best_model.load_state_dict(
                self.ctx.broadcast_object(
                    {k: v.cpu() for k, v in best_model.state_dict().items()} if self.ctx.is_main else None
                )
            )
        test = evaluate_loader(best_model, self.test_loader, self.augment, self.data.num_classes, self.ctx).compute(
            self.data.class_names
        )
        results = {
            "test": test,
            "test_split": self.test_split_name,
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "monitor": self.cfg.monitor,
            "train_time_s": round(self._elapsed(), 1),
            "parameters": count_parameters(self.model),
            "model": self._model_name(),
            "preset": self.cfg.preset,
            "data": self.cfg.data,
            "skipped_images": len(self.bad_images),
            "world_size": self.ctx.world_size,
            "global_batch_size": self.global_batch,
            "per_device_batch_size": self.local_batch,
            "lr": self.cfg.lr,
        }
        if self.ctx.is_main:
            write_json(self.run_dir / "results.json", results)
            write_report(
                self.run_dir,
                best_model,
                self.test_loader.split,
                self.augment,
                self.data.class_names,
                self.history,
                test,
            )
            self._write_run_files(status="complete")
            self._print(
                f"test top-1 {test['top1']:.4f}  top-5 {test['top5']:.4f}  f1-macro {test['f1_macro']:.4f}"
                f"  ->  {self.run_dir}"
            )
        return {**results, "run_dir": str(self.run_dir)}

    # -- files ----------------------------------------------------------------------------
    def _write_run_files(self, status: str, error: str | None = None) -> None:
        with atomic_path(self.run_dir / "args.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        info = {
            "status": status,
            "run_dir": str(self.run_dir),
            "world_size": self.ctx.world_size,
            "global_batch_size": self.global_batch,
            "per_device_batch_size": self.local_batch,
        }
        if error:
            info["error"] = error
        write_json(self.run_dir / "run.json", info)
        if self.bad_images:
            with atomic_path(self.run_dir / "skipped_images.txt") as tmp:
                tmp.write_text("\n".join(self.bad_images) + "\n")

    def _write_metrics(self) -> None:
        buffer = io.StringIO()
        fields = [
            "epoch",
            "train_loss",
            "train_top1",
            "train_top5",
            "val_loss",
            "val_top1",
            "val_top5",
            "lr",
            "images_per_s",
            "time_s",
        ]
        writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.history)
        with atomic_path(self.run_dir / "metrics.csv") as tmp:
            tmp.write_text(buffer.getvalue())

    def _print(self, message: str) -> None:
        if self.ctx.is_main and self.cfg.progress:
            print(message, file=sys.stderr)

    def _log(self, row: dict) -> None:
        self._print(
            f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
            f"val_top1 {row['val_top1']:.4f}  val_top5 {row['val_top5']:.4f}  lr {row['lr']:.2e}  "
            f"{row['images_per_s']:.0f} img/s"
        )


def resume_config(run_dir: str | os.PathLike, **changes: Any) -> TrainConfig:
    """The saved configuration of a run, with `resume` set and the given fields changed."""
    path = Path(run_dir) / "args.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a vitkit run folder (no args.yaml): nothing to resume")
    saved = yaml.safe_load(path.read_text())
    for key in ("mean", "std"):
        if saved.get(key) is not None:
            saved[key] = tuple(saved[key])
    return TrainConfig(**{**saved, **changes, "resume": True, "out": str(run_dir)}).validate()
