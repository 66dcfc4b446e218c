"""The wall-clock budget of a command (--time-budget): how many optimizer steps fit, and what is kept for
the end of the run. `TimeBudget` is pure bookkeeping; `reserve_for_finish` and `time_inference` measure
a trainer's costs for it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

import torch

from ..data.loader import BatchLoader
from ..eval.loop import eval_logits
from ..eval.ood import MAX_BANK
from ..eval.trust import mirrors_for_scores
from ..models import count_parameters
from ..runtime import Bf16Autocast
from ..viz.report import REPORT_FIGURES

if TYPE_CHECKING:
    from .engine import Trainer

FIRST_PLAN_STEPS = 20  # with a time budget, optimizer steps timed before the schedule is first fitted
# With a time budget, warmup takes at most this share of the fitted schedule: --warmup-epochs tuned for
# a 30-minute run would otherwise be the whole of a 3-minute one.
BUDGET_WARMUP_SHARE = 0.1
# With a time budget, a last epoch starts while this many optimizer steps' time is left: the schedule is
# fitted to the whole budget, so that epoch, cut short by the time-out, is where the rate decays to its
# floor. Its validation pass is kept in the reserve either way, so not starting it ends the run early by
# that pass and the time left, however small a share of an epoch the time left is.
LAST_EPOCH_MIN_STEPS = 2
# Kept after the final figures for the process to write its last files and exit.
EXIT_MARGIN_S = 1.0
# An upper estimate of the disk's write rate, for a checkpoint's save time before one has been timed.
SAVE_BYTES_PER_S = 200e6
# With a time budget, the knn feature bank takes at most this share of it (and at least MIN_BANK images):
# extracting MAX_BANK images' features would be most of a short run's time.
BANK_BUDGET_SHARE = 0.05
MIN_BANK = 100
# Images of the validation split timed before training, for the budget's first estimate of an evaluation pass.
TIMED_INFERENCE_IMAGES = 32


class TimeBudget:
    """The wall clock of a whole command, and with a budget (minutes > 0) how many optimizer steps fit in it.

    The clock starts when the command does (`started`), so data preparation and the size probe spend the
    budget too; `reserve` is the time kept for what follows training (the final evaluation and the plots),
    which the trainer measures and updates. The schedule's length is unknown until steps have been timed:
    `plan` returns None (hold the peak) until the first steps, then fits the length to the training time
    left at the measured pace (evaluation included, since the clock runs through it); the caller refits
    after every epoch."""

    def __init__(self, minutes: float, clock: Callable[[], float] = time.monotonic, started: float | None = None):
        self.seconds = minutes * 60
        self.clock = clock
        self.elapsed_before = 0.0  # time spent before a resume
        self.t0 = clock() if started is None else started
        self.reserve = 0.0  # seconds kept after training: final evaluation and plots
        self.t_train: float | None = None  # when training began in this process (pace is measured from it)
        self.steps_at_train = 0
        self.cut_short = False  # set when exhausted() has ended training inside an epoch
        self.stopped_at: float | None = None  # when exhausted() first ended training (the clock's time)

    @property
    def enabled(self) -> bool:
        return self.seconds > 0

    @property
    def training_seconds(self) -> float:
        """The budget less the reserve: when training must end."""
        return self.seconds - self.reserve

    def start_training(self, steps_done: int) -> None:
        """Training begins (after data preparation, the size probe, a resume's loading): pace is measured
        from here."""
        self.t_train, self.steps_at_train = self.clock(), steps_done

    def elapsed(self) -> float:
        return self.elapsed_before + self.clock() - self.t0

    def training_time(self) -> float:
        return self.clock() - (self.t0 if self.t_train is None else self.t_train)

    def exhausted(self, step_s: float = 0.0) -> bool:
        """Training must stop: stepping on (a step takes `step_s`) would end further past the training
        time than stopping now ends before it."""
        done = self.enabled and self.elapsed() + step_s / 2 > self.training_seconds
        if done and not self.cut_short:
            self.stopped_at = self.clock()
        self.cut_short = self.cut_short or done
        return done

    def keep_for_finish(
        self,
        inference_s_per_image: float,
        val_images: int,
        report_images: int,
        report_passes: float,
        figures_s: float,
        save_s: float,
        calibration_images: int = 0,
    ) -> None:
        """Reserve what runs after training stops: the last epoch's validation pass and checkpoints
        (`save_s`), `report_passes` inference passes over the reported split (its final evaluation, and
        the bf16 agreement's two where it is measured), the calibration's passes over `calibration_images`,
        the report's figures and the process's exit."""
        images = val_images + report_passes * report_images + calibration_images
        passes_s = inference_s_per_image * images
        self.reserve = passes_s + figures_s + save_s + EXIT_MARGIN_S

    def plan(self, steps_done: int) -> int | None:
        """Total optimizer steps that fit in the budget at the pace so far (None: not yet known)."""
        steps = steps_done - self.steps_at_train
        if not self.enabled or steps < 1:
            return None
        per_step = self.training_time() / steps
        return steps_done + int(max(0.0, self.training_seconds - self.elapsed()) / per_step)

    def another_epoch_fits(self, steps_done: int) -> bool:
        """Start another epoch, to be cut short by the time-out, while LAST_EPOCH_MIN_STEPS optimizer steps
        fit in the training time left (a step's time measured with the validation passes between them)."""
        if not self.enabled:
            return True
        if self.cut_short:  # the time ran out inside the last epoch: another would train a step past it
            return False
        step_s = self.training_time() / max(1, steps_done - self.steps_at_train)
        return self.elapsed() + LAST_EPOCH_MIN_STEPS * step_s <= self.training_seconds

    def state_dict(self) -> dict:
        return {"elapsed": self.elapsed()}

    def load_state_dict(self, state: dict) -> None:
        self.elapsed_before = float(state["elapsed"])


def reserve_for_finish(trainer: Trainer) -> None:
    """Keep what runs after training stops out of the training budget, at the trainer's latest measured
    costs: the last epoch's validation and checkpoints, the final evaluation (and bf16 agreement) of the
    reported split and the report's figures."""
    setup = trainer.setup
    bytes_per_copy = 4 * count_parameters(trainer.model)  # last/ also holds the optimizer's state: 3 copies
    estimate = {"best": bytes_per_copy / SAVE_BYTES_PER_S, "last": 3 * bytes_per_copy / SAVE_BYTES_PER_S}
    save_s = sum(estimate[kind] if s is None else s for kind, s in trainer.save_s.items())
    trainer.budget.keep_for_finish(
        trainer.inference_s_per_image,
        len(setup.val_loader.split),
        len(setup.eval_loader.split),
        # the agreement runs every batch in fp32 (for single-label also the final evaluation) and in bf16
        (1 + trainer.multi_label + trainer.bf16_pass_share) if trainer.measures_bf16 else 1,
        REPORT_FIGURES * trainer.state.figure_s if trainer.cfg.plots else 0.0,
        save_s,
        0 if trainer.multi_label else calibration_images(trainer),
    )


def feature_bank_images(trainer: Trainer) -> int:
    """Training images whose features the end of a single-label run keeps for knn rejection: MAX_BANK, but
    with a time budget no more than BANK_BUDGET_SHARE of it buys at the measured inference pace."""
    images = min(MAX_BANK, len(trainer.data.train))
    if trainer.budget.enabled:
        affordable = BANK_BUDGET_SHARE * trainer.budget.seconds / max(trainer.inference_s_per_image, 1e-9)
        images = min(images, max(MIN_BANK, int(affordable)))
    return images


def calibration_images(trainer: Trainer) -> int:
    """Images the calibration at the end of a single-label run passes through the model (eval.trust.fit_trust):
    the validation split, the reported split when it is another, and the training images of the
    unknown-input feature bank; the validation and bank images twice when the scores read mirrors too."""
    setup = trainer.setup
    reported = len(setup.eval_loader.split) if setup.eval_split != "val" else 0
    views = 2 if mirrors_for_scores(trainer.cfg.hflip) else 1  # each image and its mirror
    return views * (len(setup.val_loader.split) + feature_bank_images(trainer)) + reported


def time_inference(trainer: Trainer) -> float:
    """Seconds per image of an evaluation pass (loading included), from a few validation images after an
    untimed warm-up: the budget's estimate until a whole validation pass has been timed, so that a budget
    ending inside the first epoch still keeps time for what follows it. Where the run will measure bf16's
    agreement, also sets `trainer.bf16_pass_share`, a bf16 pass's time as a share of that."""
    split = trainer.setup.val_loader.split
    count = min(len(split), TIMED_INFERENCE_IMAGES)
    model, clock = trainer.eval_model().eval(), trainer.budget.clock
    with torch.inference_mode():
        loader = BatchLoader(split.subset(torch.arange(count)), count, shuffle=False, device=trainer.device)
        t = clock()
        images, _ = next(loader.batches())
        loading_s = clock() - t
        eval_logits(model, trainer.augment.for_inference(images[:2]))  # first-call costs: allocation, kernels
        fp32_s = loading_s + timed(clock, lambda: eval_logits(model, trainer.augment.for_inference(images)))
        if trainer.measures_bf16:
            bf16 = Bf16Autocast(model, trainer.device)
            bf16(trainer.augment.for_inference(images[:2]))
            bf16_s = timed(clock, lambda: bf16(trainer.augment.for_inference(images)))
            trainer.bf16_pass_share = bf16_s / max(fp32_s, 1e-9)
    return fp32_s / max(1, count)


def timed(clock: Callable[[], float], work: Callable[[], object]) -> float:
    t = clock()
    work()
    return clock() - t
