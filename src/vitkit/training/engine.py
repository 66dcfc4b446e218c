"""The training loop (`vitkit.training.train` claims a run folder and calls `Trainer.fit`). Per step:
lr -> augment on the device -> forward/backward (micro-batched) -> optimizer -> metrics accumulated on
the device. Per log interval: the one host synchronisation (progress, non-finite loss check). Per
epoch: evaluate -> best/ when the monitored metric improves -> refit the time budget -> last/."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..data.augment import mix_batch
from ..data.loader import BatchLoader, epoch_seed
from ..errors import MissingFile, TrainingDiverged, VitkitError
from ..eval.agreement import MIN_AGREEMENT, bf16_agreement, describe, record_agreement, record_bf16_agreement
from ..eval.loop import eval_logits, evaluate_loader
from ..eval.metrics import MetricAccumulator
from ..eval.multilabel import LossAccumulator, evaluate_multilabel
from ..inference.precision import choose_precision
from ..models import count_parameters
from ..models.io import load_model
from ..pretrained import UNTUNED_THRESHOLD
from ..runtime import autocast
from ..viz.report import REPORT_FIGURES
from .build import Runtime, build
from .callbacks import Callbacks, make_trackers
from .config import TrainConfig
from .losses import asymmetric_loss, binary_cross_entropy
from .optim import Lookahead, LookaheadEMA, build_optimizer, frozen_parameters, param_groups
from .rundir import RunDir, checkpoint_metadata
from .schedule import BUDGET_WARMUP_SHARE, FIRST_PLAN_STEPS, SAVE_BYTES_PER_S, Plateau, TimeBudget, lr_factor

LOG_EVERY = 25  # optimizer steps between host synchronisations for progress and the loss check
# Set by train()'s Ctrl-C/SIGTERM handler beside the KeyboardInterrupt it raises: Python prints and drops a
# KeyboardInterrupt raised inside a finalizer (an object's __del__), so the loop raises it again at its next step.
INTERRUPT_REQUESTED = threading.Event()
# Images of the validation split timed before training, for the budget's first estimate of an evaluation pass.
TIMED_INFERENCE_IMAGES = 32
TRAIN_BATCH_PLOT = "train_batch.png"


def split_title(split: str, selected_checkpoint: bool) -> str:
    """How figures and messages name the split the final metrics are from."""
    name = {"val": "validation", "test": "test", "train": "training"}[split]
    return f"{name} split" + (" (it also chose the best epoch)" if selected_checkpoint else "")


class Trainer:
    """A run's model, optimizer and schedule state, fully built from the configuration."""

    def __init__(self, cfg: TrainConfig, runtime: Runtime | None = None, budget: TimeBudget | None = None):
        # the command's clock: started by the caller when the command began, so data preparation counts
        self.budget = budget or TimeBudget(cfg.time_budget)
        runtime = runtime or Runtime.create(cfg)
        self.device, self.ctx, self.bf16 = runtime.device, runtime.ctx, runtime.bf16
        self.setup = build(cfg, runtime, self.budget)
        cfg = self.cfg  # as built: with the --time-budget size choice, when one was made
        self.multi_label = self.data.multi_label
        if self.multi_label and self.ctx.enabled:
            raise VitkitError("multi-label data trains in one process for now: drop --nproc")
        # what best/, plateau and early stopping follow: top-1 means nothing for label sets, mAP does
        self.monitor = "val_map" if self.multi_label and cfg.monitor == "val_top1" else cfg.monitor
        if self.monitor == "val_map" and not self.multi_label:
            raise VitkitError("--monitor val_map is for multi-label data: use val_top1 or val_loss")
        self.thresholds: list[float] | None = None  # per label, tuned on the validation split each epoch
        head_scale = cfg.head_lr / cfg.lr if cfg.head_lr else 1.0
        groups = param_groups(
            self.model,
            cfg.weight_decay,
            cfg.layer_decay,
            head_scale,
            cfg.freeze_backbone,
            cfg.norm_lr_scale,
            cfg.norm_bias_decay,
        )
        self.optimizer = build_optimizer(
            self.model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, groups, cfg.nesterov
        )
        trained = [p for group in groups for p in group["params"]]
        self.lookahead = Lookahead(trained, cfg.lookahead) if cfg.lookahead else None
        # --alternate-flips: each training image's flip in the first epoch, drawn once from the seed
        self.first_flips = None
        if cfg.alternate_flips:
            gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, 0, 3))
            self.first_flips = (torch.rand(len(self.data.train), generator=gen) < 0.5).to(self.device)
        ema_fn = get_ema_multi_avg_fn(cfg.ema) if cfg.ema else None
        self.ema = AveragedModel(self.model, multi_avg_fn=ema_fn, use_buffers=True) if cfg.ema else None
        self.aug_gen = torch.Generator(device=self.device)
        mode = "min" if self.monitor == "val_loss" else "max"
        self.plateau = Plateau(mode, cfg.plateau_factor, cfg.plateau_patience)
        self.stopper = Plateau(mode, patience=cfg.early_stopping)  # best-so-far of the monitored metric
        self.steps_per_epoch = len(self.train_loader)
        self.lookahead_ema = None
        if cfg.lookahead_ema:
            start = round(cfg.lookahead_ema_start * -(-self.steps_per_epoch // cfg.accum_steps))
            self.lookahead_ema = LookaheadEMA(
                self.model, cfg.lookahead_ema, cfg.lookahead_ema_every, start, cfg.lookahead_ema_ramp
            )
        # the parameters --freeze-after has stopped by the current epoch (set again as each epoch starts);
        # computed here too so that a name the model lacks is refused before any work
        self.frozen = frozen_parameters(self.model, cfg.freeze_after, 0)
        self.warmup_steps = int(cfg.warmup_epochs * self.steps_per_epoch)
        # with a time budget the length is unknown until steps have been timed: the schedule holds its peak
        self.planned_steps = None if cfg.time_budget else -(-self.steps_per_epoch // cfg.accum_steps) * cfg.epochs
        self.step, self.history, self.best_epoch = 0, [], -1
        self.lr = cfg.lr  # the rate of the latest step (set_lr)
        self.replanned_from: int | None = None  # a resumed schedule's earlier length, when --epochs changed it
        self.callbacks = Callbacks()
        self.stopped_by = "epochs"  # or time_budget, early_stopping: what ended the run, for its records
        # where '--precision auto' would run the model in bf16, the run measures bf16's agreement with fp32
        self.measures_bf16 = choose_precision("auto", self.device)[0] == "bf16"
        # what a --time-budget keeps for the end of the run, measured as the run goes (see reserve_for_finish)
        self.figure_s = 0.0  # one figure's drawing time
        self.inference_s_per_image = 0.0  # of an evaluation pass
        self.save_s = {"best": None, "last": None}  # each checkpoint's latest saving time

    # the run's parts, owned by its Setup
    cfg = property(lambda self: self.setup.config)
    model = property(lambda self: self.setup.model)
    data = property(lambda self: self.setup.data)
    augment = property(lambda self: self.setup.augment)
    train_loader = property(lambda self: self.setup.train_loader)
    image_size = property(lambda self: self.setup.image_size)

    # -- one step ----------------------------------------------------------------------------
    def scheduled_lr(self) -> float:
        """The learning rate of the current step: warmup, schedule and plateau reductions."""
        cfg, warmup = self.cfg, self.warmup_steps
        if cfg.time_budget and self.planned_steps:
            warmup = min(warmup, max(FIRST_PLAN_STEPS, int(BUDGET_WARMUP_SHARE * self.planned_steps)))
        factor = lr_factor(
            self.step, self.planned_steps, warmup, cfg.schedule, cfg.min_lr_ratio, cfg.triangle_start, cfg.triangle_peak
        )
        return cfg.lr * factor * self.plateau.scale

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
        uses it at batch 256; its rate is in benchmarks/results/vs_keras*.json)."""
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
            self.step += 1
            if self.lookahead is not None:
                self.lookahead.after_step(self.step)
            if self.lookahead_ema is not None:
                self.lookahead_ema.after_step(self.step, self.planned_steps)
            if self.ema is not None:
                self.ema.update_parameters(self.model)
        return torch.cat(all_logits), loss

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of soft targets: cross-entropy, or for multi-label data BCE or the asymmetric
        loss on sigmoid outputs (training/losses.py); all are means over the images."""
        cfg, weights = self.cfg, self.setup.class_weights
        if not self.multi_label:
            # with soft targets torch divides the (class-weighted) sum by the chunk's size, not by
            # its weights' sum, so the chunks still add up to the whole batch's loss
            return F.cross_entropy(logits, targets, weight=weights)
        if cfg.multilabel_loss == "asymmetric":
            return asymmetric_loss(logits, targets, cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip, weights)
        return binary_cross_entropy(logits, targets, weights)

    # -- one epoch ---------------------------------------------------------------------------
    def train_epoch(self, net: nn.Module, epoch: int, start_batch: int) -> dict:
        cfg, ctx = self.cfg, self.ctx
        self.frozen = frozen_parameters(self.model, cfg.freeze_after, epoch)
        net.train()
        if self.multi_label:
            acc = LossAccumulator(self.data.num_classes, device=self.device)
        else:
            acc = MetricAccumulator(self.data.num_classes, device=self.device)
        first_bad_step = torch.full((), -1, device=self.device)  # kept on the device: no sync per step
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=start_batch,
            desc=f"epoch {epoch + 1}",
            leave=False,
            disable=not (cfg.progress and ctx.is_main and sys.stderr.isatty()),  # no bar frames in log files
            file=sys.stderr,
            dynamic_ncols=True,
        )
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
            first_bad_step = torch.where((first_bad_step < 0) & ~loss.isfinite(), self.step, first_bad_step)
            seen += labels.shape[0]
            bar.update(1)
            if b % LOG_EVERY == 0 or b + 1 == self.steps_per_epoch:  # sync point: read the device's sums
                self.check_finite(int(first_bad_step))
                accuracy = {} if self.multi_label else {"acc": f"{acc.correct / acc.count:.3f}"}
                bar.set_postfix(
                    loss=f"{acc.loss_sum / acc.count:.3f}",
                    **accuracy,
                    lr=f"{self.lr:.2e}",
                    img_s=f"{seen * ctx.world_size / (time.perf_counter() - t_start):.0f}",
                )
            if boundary and not self.history and self.step == FIRST_PLAN_STEPS:
                self.refit_budget()  # a first estimate, so the decay does not end with the first epoch
            if boundary and cfg.save_every and self.step % cfg.save_every == 0 and b + 1 < self.steps_per_epoch:
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

    def reserve_for_finish(self) -> None:
        """Keep what runs after training stops out of the training budget, at the latest measured costs:
        the last epoch's validation and checkpoints, the final evaluation (and bf16 agreement) of the
        reported split and the report's figures."""
        setup = self.setup
        bytes_per_copy = 4 * count_parameters(self.model)  # last/ also holds the optimizer's state: 3 copies
        estimate = {"best": bytes_per_copy / SAVE_BYTES_PER_S, "last": 3 * bytes_per_copy / SAVE_BYTES_PER_S}
        save_s = sum(estimate[kind] if s is None else s for kind, s in self.save_s.items())
        self.budget.keep_for_finish(
            self.inference_s_per_image,
            len(setup.val_loader.split),
            len(setup.eval_loader.split),
            # the agreement runs every batch in fp32 (for single-label also the final evaluation) and in bf16
            (3 if self.multi_label else 2) if self.measures_bf16 else 1,
            REPORT_FIGURES * self.figure_s if self.cfg.plots else 0.0,
            save_s,
        )

    def time_inference(self) -> float:
        """Seconds per image of an evaluation pass (loading included), from a few validation images: the
        budget's estimate until a whole validation pass has been timed, so that a budget ending inside the
        first epoch still keeps time for what follows it."""
        split = self.setup.val_loader.split
        count = min(len(split), TIMED_INFERENCE_IMAGES)
        model = self.eval_model().eval()
        t = self.budget.clock()
        with torch.inference_mode():
            for images, _ in BatchLoader(split.subset(torch.arange(count)), count, shuffle=False, device=self.device).batches():
                eval_logits(model, self.augment.for_inference(images))
        return (self.budget.clock() - t) / max(1, count)

    def save(self, kind: str, model: nn.Module, state: dict | None = None) -> None:
        """Save best/ or last/, timing it for the budget's reserve."""
        t = self.budget.clock()
        self.run.save_checkpoint(kind, model, self.metadata(), state)
        self.save_s[kind] = self.budget.clock() - t

    def refit_budget(self) -> None:
        """Fit the schedule length to the time left; every rank takes rank 0's plan so that their
        learning rates agree."""
        if self.cfg.time_budget:
            self.planned_steps = self.ctx.broadcast_object(self.budget.plan(self.step))

    # -- the run -----------------------------------------------------------------------------
    def fit(self, run: RunDir, callbacks=()) -> dict[str, Any]:
        """Train into `run`; `callbacks` (see callbacks.py) and the --log trackers are called on the
        process that writes the run folder."""
        cfg, ctx = self.cfg, self.ctx
        self.run = run
        start_epoch, start_batch = self.load_last() if cfg.resume else (0, 0)
        if ctx.is_main and not cfg.quiet:
            from .summary import startup_summary

            print(startup_summary(self, start_epoch), file=sys.stderr, flush=True)
        run.write_config(cfg)
        run.write_status("running", self.run_info())
        run.write_skipped(self.setup.bad_images)
        self.callbacks = Callbacks([*make_trackers(cfg.log), *callbacks] if ctx.is_main else [])
        self.callbacks.call("on_train_begin", run.path, cfg.to_dict(), [dict(row) for row in self.history])
        t_figure = self.budget.clock()
        draws_train_batch = ctx.is_main and cfg.plots and not (run.path / TRAIN_BATCH_PLOT).exists()
        if draws_train_batch:
            from ..viz.report import write_train_batch

            write_train_batch(
                run.path / TRAIN_BATCH_PLOT,
                self.data.train,
                self.augment,
                self.augmented_batch,
                self.data.class_names,
                cfg.seed,
                self.device,
            )
        if draws_train_batch:  # else resumed: the time measured when it was drawn came back with the state
            # one figure's time (matplotlib's import included) stands for each of the report's figures
            self.figure_s = self.budget.clock() - t_figure
        if cfg.time_budget:
            self.inference_s_per_image = self.time_inference()
            self.reserve_for_finish()
        net = self.wrap_model()
        epoch = start_epoch
        self.budget.start_training(self.step, start_epoch)
        self.stopped_by = "time_budget" if cfg.time_budget else "epochs"
        while cfg.time_budget or epoch < cfg.epochs:
            if start_batch == 0 or epoch != start_epoch:
                torch.manual_seed(epoch_seed(cfg.seed, epoch, 1))
                self.aug_gen.manual_seed(epoch_seed(cfg.seed, epoch, 2 + ctx.rank))
            row = {"epoch": epoch + 1, **self.train_epoch(net, epoch, start_batch if epoch == start_epoch else 0)}
            t_val = self.budget.clock()
            row.update(self.validate())
            self.inference_s_per_image = (self.budget.clock() - t_val) / max(1, len(self.setup.val_loader.split))
            row["time_s"] = round(self.budget.elapsed(), 2)
            self.history.append(row)
            if self.stopper.step(row[self.monitor]):
                self.best_epoch = epoch + 1
                self.save("best", self.eval_model())
            if cfg.schedule == "plateau":
                self.plateau.step(row[self.monitor])
                self.plateau.reduce_if_stalled()
            self.reserve_for_finish()
            self.refit_budget()
            epoch += 1
            self.save_last(epoch, 0)
            run.write_metrics(self.history)
            self.callbacks.call("on_epoch_end", row["epoch"], dict(row))
            self.log(row)
            if cfg.early_stopping and self.stopper.wait >= cfg.early_stopping:
                self.log(f"early stopping: no {self.monitor} improvement for {cfg.early_stopping} epochs")
                self.stopped_by = "early_stopping"
                break
            if ctx.any(not self.budget.another_epoch_fits(len(self.history))):
                break
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Evaluate the best checkpoint on the reported split (test, else validation), write
        results.json and the plots."""
        setup = self.setup
        t_finish, training_s = self.budget.clock(), self.budget.training_time()
        if self.multi_label:
            metrics, draw, summary, agreement = self.final_multilabel()
        else:
            metrics, draw, summary, agreement = self.final_single()
        if self.ctx.is_main and self.cfg.plots:
            draw()  # before results.json, whose wall time includes the figures
        split = setup.eval_split
        results = {
            "split": split,
            # the validation split also picked best/ (and early stopping): its numbers are optimistic
            "split_selected_checkpoint": setup.split_selected_checkpoint,
            "metrics": metrics,
            **({"bf16_agreement": agreement} if agreement else {}),
            **self.run_summary(training_s),
        }
        self.run.write_results(results)
        self.callbacks.call("on_train_end", {**results, "run_dir": str(self.run.path)})
        self.end_run()
        chose = "; it also chose the best epoch, so it is optimistic" if setup.split_selected_checkpoint else ""
        images = len(setup.eval_loader.split)
        self.log(
            f"{split_title(split, False)} ({images} images, epoch {self.best_epoch}'s weights{chose}): "
            f"{summary}  ->  {self.run.path}"
        )
        if agreement:
            verdict = "runs bf16" if record_agreement(agreement) >= MIN_AGREEMENT else f"stays in fp32 (below {MIN_AGREEMENT:.1%})"
            self.log(f"{describe(agreement)}: --precision auto {verdict}")
        if self.budget.enabled:
            self.log(
                f"time: {self.budget.elapsed():.0f} s of the {self.budget.seconds:.0f} s budget (start-up "
                f"{self.budget.elapsed() - training_s - (self.budget.clock() - t_finish):.0f} s, training "
                f"{training_s:.0f} s, final evaluation and figures {self.budget.clock() - t_finish:.0f} s)"
            )
        return {**results, "run_dir": str(self.run.path)}

    def final_single(self):
        """(metrics, figure drawing, summary line) of the best checkpoint; every rank evaluates its shard."""
        from ..viz.report import write_report

        ctx, setup = self.ctx, self.setup
        best = load_model(self.run.checkpoint("best"))[0] if ctx.is_main else self.eval_model()
        best = best.to(self.device)
        if ctx.enabled:  # every rank evaluates its shard with rank 0's best weights
            state = {k: v.cpu() for k, v in best.state_dict().items()} if ctx.is_main else None
            best.load_state_dict(ctx.broadcast_object(state))
        if self.measures_bf16:  # the final evaluation's fp32 pass is also the agreement's reference
            accumulator = MetricAccumulator(self.data.num_classes, device=self.device)
            agreement = self.measure_bf16(best, None, accumulator)
            m = accumulator.compute(self.data.class_names)
        else:
            m, agreement = self.evaluate(best, setup.eval_loader, self.data.class_names), None
        names, history = self.data.class_names, self.history
        title = split_title(setup.eval_split, setup.split_selected_checkpoint)
        top5 = f"  top-5 {m['top5']:.4f}" if self.data.num_classes > 5 else ""  # 1 by definition up to 5 classes
        return (
            m,
            lambda: write_report(self.run.path, best, setup.eval_loader.split, self.augment, names, history, m, title),
            f"top-1 {m['top1']:.4f}{top5}  f1-macro {m['f1_macro']:.4f}",
            agreement,
        )

    def final_multilabel(self):
        """`final_single` for multi-label data: the best checkpoint at its own thresholds (tuned on the
        validation split when it was saved): mAP, F1 and the per-label table (per_label.csv), and the figures."""
        from ..eval.multilabel import write_label_table
        from ..viz.report import write_multilabel_report

        split, setup = self.setup.eval_loader, self.setup
        best, meta = load_model(self.run.checkpoint("best"))
        best = best.to(self.device)
        m, scores, targets = evaluate_multilabel(best, split, self.augment, self.data.class_names, meta["thresholds"])
        write_label_table(self.run.path / "per_label.csv", m)
        title = split_title(setup.eval_split, setup.split_selected_checkpoint)
        return (
            {**m, "thresholds_from": "val"},
            lambda: write_multilabel_report(
                self.run.path, best, split.split, self.augment, self.history, m, scores, targets, title,
                self.cfg.multilabel_loss,
            ),
            f"mAP macro {m['map_macro']:.4f}  micro {m['map_micro']:.4f}  f1-macro {m['f1_macro']:.4f}  "
            f"f1-micro {m['f1_micro']:.4f}",
            self.measure_bf16(best, meta["thresholds"]) if self.measures_bf16 else None,
        )

    def measure_bf16(self, best: nn.Module, thresholds: list[float] | None, fp32_metrics=None) -> dict:
        """bf16's agreement with fp32 (top-1, or label sets) on the reported split, recorded in best/ so
        that '--precision auto' is guarded from the first prediction; `fp32_metrics` as in bf16_agreement."""
        setup, reduce = self.setup, self.ctx.all_reduce_sum if self.ctx.enabled else None
        report = bf16_agreement(
            best, setup.eval_loader, self.augment.for_inference, setup.eval_split, thresholds, reduce, fp32_metrics
        )
        if self.ctx.is_main:
            record = {**report, "data": self.cfg.data}
            record_bf16_agreement(self.run.checkpoint("best"), record, notice=lambda line: self.log(line))
        return report

    def run_summary(self, training_s: float) -> dict[str, Any]:
        """results.json beside the metrics: how the run went and what it was."""
        ctx, setup = self.ctx, self.setup
        return {
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "stopped_by": self.stopped_by,
            "monitor": self.monitor,
            "train_time_s": round(training_s, 1),
            "wall_time_s": round(self.budget.elapsed(), 1),
            **({"time_budget_s": self.budget.seconds} if self.budget.enabled else {}),
            "parameters": count_parameters(self.model),
            "model": setup.model_name,
            "architecture": self.model.architecture,
            "preset": self.cfg.preset,
            "data": self.cfg.data,
            "skipped_images": len(setup.bad_images),
            "world_size": ctx.world_size,
            "global_batch_size": setup.global_batch,
            "per_device_batch_size": setup.local_batch,
            "lr": self.cfg.lr,
        }

    def end_run(self) -> None:
        self.run.write_config(self.cfg, ran=(len(self.history), self.stopped_by))
        self.run.write_status(
            "complete", {**self.run_info(), "epochs_run": len(self.history), "stopped_by": self.stopped_by}
        )

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
        val, _, _ = evaluate_multilabel(model, loader, self.augment, self.data.class_names, tune=True)
        self.thresholds = val["thresholds"]
        return {
            "val_loss": val["loss"],
            "val_map": val["map_macro"],
            "val_map_micro": val["map_micro"],
            "val_f1": val["f1_macro"],
        }

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
        return self.setup.run_info(self.ctx.world_size, self.device)

    def log(self, row: dict | str) -> None:
        """An epoch's line (top-5 only when there are more than 5 classes: else it is 1 by definition)."""
        if not self.ctx.is_main or self.cfg.quiet:
            return
        if isinstance(row, dict) and self.multi_label:
            row = (
                f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
                f"val_mAP {row['val_map']:.4f}  val_mAP_micro {row['val_map_micro']:.4f}  lr {row['lr']:.2e}  "
                f"{row['images_per_s']:.0f} img/s"
            )
        elif isinstance(row, dict):
            row = (
                f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
                f"val_top1 {row['val_top1']:.4f}  "
                + (f"val_top5 {row['val_top5']:.4f}  " if self.data.num_classes > 5 else "")
                + f"lr {row['lr']:.2e}  "
                f"{row['images_per_s']:.0f} img/s"
            )
        print(row, file=sys.stderr)

    # -- resuming ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The resumable state besides the weights: optimizer, EMA, schedule, best-so-far and time budget,
        the history, and every rank's random generators (augmentation is seeded per rank); a collective,
        as every rank contributes its generators."""
        rng = {
            "torch_rng": torch.get_rng_state(),
            "aug_rng": self.aug_gen.get_state().cpu(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        return {
            "step": self.step,
            "world_size": self.ctx.world_size,
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "lookahead": self.lookahead.state_dict() if self.lookahead else None,
            "lookahead_ema": self.lookahead_ema.state_dict() if self.lookahead_ema else None,
            "rank_rngs": self.ctx.all_gather_object(rng),
            "global_batch": self.setup.global_batch,
            "plateau": self.plateau.state_dict(),
            "stopper": self.stopper.state_dict(),
            "history": self.history,
            "best_epoch": self.best_epoch,
            "elapsed": self.budget.elapsed(),
            "planned_steps": self.planned_steps,
            "figure_s": self.figure_s,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put a `state_dict` back (trainer.pt of any vitkit version)."""
        if state["world_size"] != self.ctx.world_size:
            raise VitkitError(
                f"the run was trained with {state['world_size']} process(es) but is resumed with "
                f"{self.ctx.world_size}: resume with --nproc {state['world_size']} so the batches and results match"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        if self.lookahead is not None and state.get("lookahead") is not None:
            self.lookahead.load_state_dict(state["lookahead"])
        if self.lookahead_ema is not None and state.get("lookahead_ema") is not None:
            self.lookahead_ema.load_state_dict(state["lookahead_ema"])
        self.step, self.history, self.best_epoch = state["step"], state["history"], state["best_epoch"]
        self.plateau.load_state_dict(state["plateau"])
        self.stopper.load_state_dict(state["stopper"])
        self.budget.load_state_dict({"elapsed": state["elapsed"]})
        self.figure_s = state.get("figure_s", 0.0)
        planned = state["planned_steps"]
        if self.cfg.time_budget:
            self.planned_steps = planned
        elif planned != self.planned_steps:
            # --epochs changed (a finished run extended): the schedule is re-planned over the new length, as if
            # it had been asked for from the start, so the extension decays afresh from where that schedule
            # stands now instead of running at the old schedule's floor
            self.replanned_from = planned
        rng = state["rank_rngs"][self.ctx.rank]
        torch.set_rng_state(rng["torch_rng"])
        self.aug_gen.set_state(rng["aug_rng"])
        if rng["cuda_rng"] is not None:
            torch.cuda.set_rng_state(rng["cuda_rng"], self.device)

    def save_last(self, epoch: int, next_batch: int) -> None:
        self.save("last", self.model, {**self.state_dict(), "epoch": epoch, "next_batch": next_batch})

    def load_last(self) -> tuple[int, int]:
        """Weights and state of last/; returns (epoch, next batch) to continue from."""
        last = self.run.find_last()
        if last is None:
            raise MissingFile(
                f"nothing to resume in {self.run.path}: no last/ checkpoint (the run never "
                "finished one); start it again without --resume"
            )
        saved, meta = load_model(last)
        self.model.load_state_dict(saved.state_dict())
        if self.multi_label and meta.get("thresholds_tuned", True):  # kept for the next mid-epoch last/
            self.thresholds = meta.get("thresholds")
        state = self.run.load_trainer_state(last)
        self.load_state_dict(state)
        return state["epoch"], state["next_batch"]
