"""The training loop, top to bottom: `Trainer.fit` trains epoch after epoch, then finishes the run
(finish.py); below it one epoch and one step. `vitkit.training.train` claims a run folder, builds the
Runtime and the TimeBudget and calls `Trainer.fit`. Per step: lr -> augment on the device ->
forward/backward (micro-batched) -> optimizer -> metrics accumulated on the device. Per log interval:
the one host synchronisation (progress, non-finite loss check). Per epoch: evaluate -> best/ when the
monitored metric improves -> refit the time budget -> last/. What a resume continues from is
`self.state` (state.py)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..data.augment import mix_batch
from ..data.loader import epoch_seed
from ..errors import TrainingDiverged, VitkitError
from ..eval.loop import evaluate_loader
from ..eval.metrics import MetricAccumulator
from ..eval.multilabel import LossAccumulator, evaluate_multilabel
from ..inference.precision import choose_precision
from ..pretrained import UNTUNED_THRESHOLD
from ..runtime import autocast
from .budget import BUDGET_WARMUP_SHARE, FIRST_PLAN_STEPS, TimeBudget, reserve_for_finish
from .build import Runtime, build
from .callbacks import Callbacks
from .checkpointing import Checkpoints
from .config import TrainConfig
from .distributed import shard_gatherer
from .finish import finish
from .losses import training_loss
from .optim import frozen_parameters, training_optimizer
from .rundir import RunDir, StoppedBy, checkpoint_metadata
from .schedule import Plateau, lr_factor
from .start import start_run
from .state import TrainState
from .summary import epoch_line

LOG_EVERY = 25  # optimizer steps between host synchronisations for progress and the loss check
# Set by train()'s Ctrl-C/SIGTERM handler beside the KeyboardInterrupt it raises: Python prints and drops a
# KeyboardInterrupt raised inside a finalizer (an object's __del__), so the loop raises it again at its next step.
INTERRUPT_REQUESTED = threading.Event()


class Trainer:
    """A run's model, optimizer and schedule, fully built from the configuration on `runtime`'s device;
    `budget` is the command's clock, started by the caller when the command began, so data preparation
    counts."""

    def __init__(self, cfg: TrainConfig, runtime: Runtime, budget: TimeBudget):
        self.budget, self.device, self.ctx, self.bf16 = budget, runtime.device, runtime.ctx, runtime.bf16
        # the configuration as built: with the --time-budget size choice, when one was made
        self.cfg, self.setup = build(cfg, runtime, budget)
        cfg, setup = self.cfg, self.setup
        self.model, self.data, self.augment = setup.model, setup.data, setup.augment
        self.train_loader, self.image_size = setup.train_loader, setup.image_size
        self.multi_label = self.data.multi_label
        # what best/, plateau and early stopping follow: top-1 means nothing for label sets, mAP does
        self.monitor = "val_map" if self.multi_label and cfg.monitor == "val_top1" else cfg.monitor
        if self.monitor == "val_map" and not self.multi_label:
            raise VitkitError("--monitor val_map is for multi-label data: use val_top1 or val_loss")
        self.thresholds: list[float] | None = None  # per label, tuned on the validation split each epoch
        # --alternate-flips: each training image's flip in the first epoch, drawn once from the seed
        self.first_flips = None
        if cfg.alternate_flips:
            gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, 0, 3))
            self.first_flips = (torch.rand(len(self.data.train), generator=gen) < 0.5).to(self.device)
        ema_fn = get_ema_multi_avg_fn(cfg.ema) if cfg.ema else None
        self.ema = AveragedModel(self.model, multi_avg_fn=ema_fn, use_buffers=True) if cfg.ema else None
        self.aug_gen = torch.Generator(device=self.device)
        self.steps_per_epoch = len(self.train_loader)
        self.optimizer, self.lookahead, self.lookahead_ema = training_optimizer(self.model, cfg, self.steps_per_epoch)
        # the parameters --freeze-after has stopped by the current epoch (set again as each epoch starts);
        # computed here too so that a name the model lacks is refused before any work
        self.frozen = frozen_parameters(self.model, cfg.freeze_after, 0)
        self.warmup_steps = int(cfg.warmup_epochs * self.steps_per_epoch)
        mode = "min" if self.monitor == "val_loss" else "max"
        self.state = TrainState(
            optimizer=self.optimizer, ema=self.ema, lookahead=self.lookahead, lookahead_ema=self.lookahead_ema,
            aug_gen=self.aug_gen, budget=budget, ctx=self.ctx, device=self.device, global_batch=setup.global_batch,
            plateau=Plateau(mode, cfg.plateau_factor, cfg.plateau_patience),
            stopper=Plateau(mode, patience=cfg.early_stopping),
            # with a time budget the length is unknown until steps have been timed: the schedule holds its peak
            planned_steps=None if cfg.time_budget else -(-self.steps_per_epoch // cfg.accum_steps) * cfg.epochs,
        )
        self.lr = cfg.lr  # the rate of the latest step (set_lr)
        self.run: RunDir | None = None  # the run folder fit() trains into
        self.callbacks = Callbacks()
        self.stopped_by = StoppedBy.EPOCHS  # what ended the run, for its records
        # where '--precision auto' would run the model in bf16, the run measures bf16's agreement with fp32
        self.measures_bf16 = choose_precision("auto", self.device)[0] == "bf16"
        # what a --time-budget keeps for the end of the run, measured as the run goes (budget.reserve_for_finish)
        self.inference_s_per_image = 0.0  # of an evaluation pass
        self.bf16_pass_share = 1.0  # a bf16 pass's time over an fp32 evaluation pass's (budget.time_inference)
        self.save_s = {"best": None, "last": None}  # each checkpoint's latest saving time
        self.checkpoints = Checkpoints(cfg.save_every, cfg.save_every_minutes, self.ctx)

    # -- the run -----------------------------------------------------------------------------
    def fit(self, run: RunDir, callbacks=()) -> dict[str, Any]:
        """Train into `run`, then finish it (finish.py); `callbacks` (see callbacks.py) and the --log
        trackers are called on the process that writes the run folder."""
        cfg, ctx, state, budget = self.cfg, self.ctx, self.state, self.budget
        start_epoch, start_batch = start_run(self, run, callbacks)
        net = self.wrap_model()
        epoch = start_epoch
        budget.start_training(state.step)
        self.stopped_by = StoppedBy.TIME_BUDGET if cfg.time_budget else StoppedBy.EPOCHS
        while cfg.time_budget or epoch < cfg.epochs:
            if start_batch == 0 or epoch != start_epoch:
                torch.manual_seed(epoch_seed(cfg.seed, epoch, 1))
                self.aug_gen.manual_seed(epoch_seed(cfg.seed, epoch, 2 + ctx.rank))
            row = {"epoch": epoch + 1, **self.train_epoch(net, epoch, start_batch if epoch == start_epoch else 0)}
            t_val = budget.clock()
            row.update(self.validate())
            self.inference_s_per_image = (budget.clock() - t_val) / max(1, len(self.setup.val_loader.split))
            row["time_s"] = round(budget.elapsed(), 2)
            state.history.append(row)
            if state.stopper.step(row[self.monitor]):
                state.best_epoch = epoch + 1
                self.save("best", self.eval_model())
            if cfg.schedule == "plateau":
                state.plateau.step(row[self.monitor])
                state.plateau.reduce_if_stalled()
            reserve_for_finish(self)
            self.refit_budget()
            epoch += 1
            self.save_last(epoch, 0)
            run.write_metrics(state.history)
            self.checkpoints.wait()  # epoch-end callbacks may read the epoch's last/
            self.callbacks.call("on_epoch_end", row["epoch"], dict(row))
            self.log(row)
            if cfg.early_stopping and state.stopper.wait >= cfg.early_stopping:
                self.log(f"early stopping: no {self.monitor} improvement for {cfg.early_stopping} epochs")
                self.stopped_by = StoppedBy.EARLY_STOPPING
                break
            if ctx.any(not budget.another_epoch_fits(state.step)):
                break
        return finish(self)

    # -- one epoch ---------------------------------------------------------------------------
    def train_epoch(self, net: nn.Module, epoch: int, start_batch: int) -> dict:
        cfg, ctx, state = self.cfg, self.ctx, self.state
        self.frozen = frozen_parameters(self.model, cfg.freeze_after, epoch)
        net.train()
        if self.multi_label:
            acc = LossAccumulator(self.data.num_classes, device=self.device)
        else:
            acc = MetricAccumulator(self.data.num_classes, device=self.device)
        first_bad_step = torch.full((), -1, device=self.device)  # kept on the device: no sync per step
        show = cfg.progress and ctx.is_main and sys.stderr.isatty()  # no bar frames in log files
        bar = tqdm(total=self.steps_per_epoch, initial=start_batch, desc=f"epoch {epoch + 1}", leave=False,
                   disable=not show, file=sys.stderr, dynamic_ncols=True)
        self.set_lr()
        seen, t_start, t_epoch = 0, time.perf_counter(), self.budget.clock()
        loader = self.train_loader
        batches = zip(loader.batches(epoch, start_batch), loader.batch_indices(epoch, start_batch))
        for b, ((images, labels), index) in enumerate(batches, start=start_batch):
            if INTERRUPT_REQUESTED.is_set():
                raise KeyboardInterrupt
            boundary = (b + 1) % cfg.accum_steps == 0 or b + 1 == self.steps_per_epoch
            logits, loss = self.train_step(net, images, labels, boundary, self.epoch_flips(epoch, index))
            acc.update(logits, labels, loss * labels.shape[0])
            first_bad_step = torch.where((first_bad_step < 0) & ~loss.isfinite(), state.step, first_bad_step)
            seen += labels.shape[0]
            state.images_trained += min(loader.global_batch, len(loader.split) - b * loader.global_batch)
            bar.update(1)
            if b % LOG_EVERY == 0 or b + 1 == self.steps_per_epoch:  # sync point: read the device's sums
                self.check_finite(int(first_bad_step))
                accuracy = {} if self.multi_label else {"acc": f"{acc.correct / acc.count:.3f}"}
                rate = seen * ctx.world_size / (time.perf_counter() - t_start)
                loss_so_far = f"{acc.loss_sum / acc.count:.3f}"
                bar.set_postfix(loss=loss_so_far, **accuracy, lr=f"{self.lr:.2e}", img_s=f"{rate:.0f}")
            if boundary and not state.history and state.step == FIRST_PLAN_STEPS:
                self.refit_budget()  # a first estimate, so the decay does not end with the first epoch
            if boundary and self.checkpoints.due(state.step, b + 1 < self.steps_per_epoch):
                self.save_last(epoch, b + 1)
            step_s = (self.budget.clock() - t_epoch) / (b + 1 - start_batch)
            if cfg.time_budget and ctx.any(self.budget.exhausted(step_s)):
                break
        bar.close()
        if self.lookahead_ema is not None:
            self.lookahead_ema.end_epoch()
        self.check_finite(int(first_bad_step))
        if ctx.enabled:
            acc.load_tensor(ctx.all_reduce_sum(acc.as_tensor()))
        train = acc.compute()
        rate = seen * ctx.world_size / max(time.perf_counter() - t_start, 1e-9)
        accuracy = {} if self.multi_label else {f"train_{k}": train[k] for k in ("top1", "top5") if k in train}
        return {"train_loss": train["loss"], **accuracy, "lr": self.lr, "images_per_s": rate}

    def check_finite(self, first_bad_step: int) -> None:
        if first_bad_step >= 0:
            raise TrainingDiverged(
                f"the training loss became non-finite (NaN or inf) at step {first_bad_step}: lower --lr "
                f"(now {self.cfg.lr}), add --grad-clip 1.0 or --warmup-epochs, or check the data and --mean/--std"
            )

    # -- one step ----------------------------------------------------------------------------
    def scheduled_lr(self) -> float:
        """The learning rate of the current step: warmup, schedule and plateau reductions."""
        cfg, warmup = self.cfg, self.warmup_steps
        if cfg.time_budget and self.state.planned_steps:
            warmup = min(warmup, max(FIRST_PLAN_STEPS, int(BUDGET_WARMUP_SHARE * self.state.planned_steps)))
        step, planned = self.state.step, self.state.planned_steps
        factor = lr_factor(step, planned, warmup, cfg.schedule, cfg.min_lr_ratio, cfg.triangle_start, cfg.triangle_peak)
        return cfg.lr * factor * self.state.plateau.scale

    def set_lr(self) -> float:
        """Put the current step's rate into the optimizer; it is also `self.lr`, for the logs."""
        self.lr = self.scheduled_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * group.get("lr_scale", 1.0)
        return self.lr

    def train_step(self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor, boundary: bool = True, flips=None):
        """Augment a uint8 batch on the device, then one model step."""
        x, targets = self.augmented_batch(images, labels, self.aug_gen, flips)
        return self.model_step(net, x, targets, boundary)

    def epoch_flips(self, epoch: int, index: torch.Tensor) -> torch.Tensor | None:
        """With --alternate-flips, which images of a batch (their indices in the training split) are
        mirrored in `epoch`: the first epoch's draw, inverted on odd epochs."""
        if self.first_flips is None:
            return None
        return self.first_flips[index.to(self.device)] ^ bool(epoch % 2)

    def augmented_batch(self, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, flips=None):
        """(model input, soft targets) of a uint8 batch: augmentation (`flips`: which images to mirror,
        else drawn at random), then MixUp/CutMix and smoothing."""
        cfg = self.cfg
        x = self.augment.for_training(images, gen, flips)
        return mix_batch(x, labels, self.data.num_classes, cfg.mixup, cfg.cutmix, cfg.label_smoothing, gen)

    def model_step(self, net: nn.Module, x: torch.Tensor, targets: torch.Tensor, boundary: bool = True):
        """Forward, backward and (at accumulation boundaries) the optimizer update. With
        `micro_batch_size` the batch goes through in chunks whose gradients add up to the whole
        batch's: the same update, with activations small enough to stay in cache (the Keras ViT preset
        uses it at batch 256)."""
        cfg = self.cfg
        if cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        size = cfg.micro_batch_size if 0 < cfg.micro_batch_size < x.shape[0] else x.shape[0]
        chunks = list(zip(x.split(size), targets.split(size)))
        all_logits, loss = [], torch.zeros((), device=x.device)
        for i, (x_part, target_part) in enumerate(chunks):
            final = boundary and i == len(chunks) - 1  # DDP all-reduces gradients once, on the last chunk
            with contextlib.nullcontext() if final or not self.ctx.enabled else net.no_sync():
                with autocast(self.device, self.bf16):
                    logits = net(x_part).float()
                part = self.loss(logits, target_part)
                part = part * (x_part.shape[0] / x.shape[0])
                (part / cfg.accum_steps).backward()
            all_logits.append(logits.detach())
            loss = loss + part.detach()
        if boundary:
            self.set_lr()
            for p in self.frozen:  # no gradient: no step, momentum or decay (DDP still reduces it)
                p.grad = None
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state.step += 1
            if self.lookahead is not None:
                self.lookahead.after_step(self.state.step)
            if self.lookahead_ema is not None:
                self.lookahead_ema.after_step(self.state.step, self.state.planned_steps)
            if self.ema is not None:
                self.ema.update_parameters(self.model)
        return torch.cat(all_logits), loss

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return training_loss(logits, targets, self.cfg, self.multi_label, self.setup.class_weights)

    def save(self, kind: str, model: nn.Module, state: dict | None = None) -> None:
        """Save best/ or last/, timing it for the budget's reserve."""
        t = self.budget.clock()
        self.run.save_checkpoint(kind, model, self.metadata(), state)
        self.save_s[kind] = self.budget.clock() - t

    def refit_budget(self) -> None:
        """Fit the schedule length to the time left; every rank takes rank 0's plan so that their
        learning rates agree."""
        if self.cfg.time_budget:
            self.state.planned_steps = self.ctx.broadcast_object(self.budget.plan(self.state.step))

    # -- helpers -----------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, loader, class_names=None) -> dict:
        reduce = self.ctx.all_reduce_sum if self.ctx.enabled else None
        return evaluate_loader(model, loader, self.augment, self.data.num_classes, reduce).compute(class_names)

    def validate(self) -> dict[str, float]:
        """The validation columns of an epoch's row; for multi-label data the thresholds are tuned here."""
        model, loader = self.eval_model(), self.setup.val_loader
        if not self.multi_label:
            val = self.evaluate(model, loader)
            return {"val_loss": val["loss"], **{f"val_{k}": val[k] for k in ("top1", "top5") if k in val}}
        gather = shard_gatherer(self.ctx, loader)
        val, _, _ = evaluate_multilabel(model, loader, self.augment, self.data.class_names, tune=True, gather=gather)
        self.thresholds = val["thresholds"]
        return {"val_loss": val["loss"], "val_map": val["map_macro"], "val_map_micro": val["map_micro"],
                "val_f1": val["f1_macro"]}

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def wrap_model(self) -> nn.Module:
        """DDP across processes and torch.compile when asked; the raw model keeps the weights."""
        net = self.model
        if self.ctx.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        return torch.compile(net) if self.cfg.compile else net

    def metadata(self) -> dict:
        meta = checkpoint_metadata(self.cfg, self.setup)
        if self.multi_label:
            # a last/ saved before the first validation: 0.5 for every label, recorded as not tuned yet
            tuned = self.thresholds is not None
            thresholds = self.thresholds if tuned else [UNTUNED_THRESHOLD] * self.data.num_classes
            meta.update(multi_label=True, thresholds=thresholds, thresholds_tuned=tuned)
        return meta

    def run_info(self) -> dict:
        return self.setup.run_info(self.ctx.world_size, self.device, self.cfg.budget_size)

    def log(self, row: dict | str) -> None:
        """A line on stderr: an epoch's row (summary.epoch_line) or a message."""
        if not self.ctx.is_main or self.cfg.quiet:
            return
        if isinstance(row, dict):
            row = epoch_line(row, self.multi_label, self.data.num_classes)
        print(row, file=sys.stderr)

    # -- resuming ----------------------------------------------------------------------------
    def save_last(self, epoch: int, next_batch: int) -> None:
        """last/ with trainer.pt, the resumable state (state.py): a collective."""
        self.checkpoints.save_last(self, epoch, next_batch)
