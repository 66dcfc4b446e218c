"""The learning-rate schedule, the best-so-far tracker and the wall-clock budget: pure bookkeeping,
no tensors, each serialisable for resuming."""

from __future__ import annotations

import math
import time
from typing import Callable

FIRST_PLAN_STEPS = 20  # with a time budget, optimizer steps timed before the schedule is first fitted
# With a time budget, warmup takes at most this share of the fitted schedule: --warmup-epochs tuned for
# a 30-minute run would otherwise be the whole of a 3-minute one.
BUDGET_WARMUP_SHARE = 0.1
# With a time budget, a last epoch starts unless less than this share of an epoch's time is left: the
# schedule is fitted to the whole budget, so that epoch, cut short by the time-out, is where the rate
# decays to its floor (a 3-minute CIFAR-10 run had stopped after its one whole epoch, at 127 s, 53 s
# before the end of its decay); only a sliver is not worth its evaluation pass.
LAST_EPOCH_MIN_SHARE = 0.1
# Kept after the final figures for the process to write its last files and exit.
EXIT_MARGIN_S = 1.0
# An upper estimate of the disk's write rate, for a checkpoint's save time before one has been timed.
SAVE_BYTES_PER_S = 200e6


def lr_factor(
    step: int,
    total_steps: int | None,
    warmup_steps: int,
    schedule: str,
    min_ratio: float,
    start_ratio: float = 0.2,
    peak_at: float = 0.23,
) -> float:
    """Linear warmup, then cosine decay to `min_ratio`, linear decay to zero, or constant. An unknown
    length (`total_steps` None: a time budget not yet fitted) holds the peak. The triangle (airbench's
    schedule) has its own warmup: from `start_ratio` up to 1 at `peak_at` of the steps, then down to
    `min_ratio` at the last; while its length is unknown it holds `start_ratio`. Plateau scaling is
    applied apart."""
    if schedule == "triangle":
        if total_steps is None:
            return start_ratio
        peak = int(peak_at * total_steps)
        if step < peak:
            return start_ratio + (1 - start_ratio) * step / peak
        return 1 + (min_ratio - 1) * min(1.0, (step - peak) / max(1, total_steps - peak))
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule not in ("cosine", "linear") or total_steps is None:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":  # the Hugging Face Trainer's default: straight to zero
        return 1.0 - progress
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Plateau:
    """Best-so-far tracking with patience: ReduceLROnPlateau and EarlyStopping (Keras semantics)."""

    def __init__(self, mode: str, factor: float = 0.5, patience: int = 5, min_delta: float = 1e-4):
        self.mode, self.factor, self.patience, self.min_delta = mode, factor, patience, min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.wait = 0
        self.scale = 1.0

    def improved(self, value: float) -> bool:
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def step(self, value: float) -> bool:
        """Record an epoch's value; True when it improved."""
        if self.improved(value):
            self.best, self.wait = value, 0
            return True
        self.wait += 1
        return False

    def reduce_if_stalled(self) -> bool:
        if self.wait >= self.patience:
            self.scale *= self.factor
            self.wait = 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait, self.scale = float(state["best"]), int(state["wait"]), float(state["scale"])


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
        self.steps_at_train = self.epochs_at_train = 0
        self.cut_short = False  # set when exhausted() has ended training inside an epoch

    @property
    def enabled(self) -> bool:
        return self.seconds > 0

    @property
    def training_seconds(self) -> float:
        """The budget less the reserve: when training must end."""
        return self.seconds - self.reserve

    def start_training(self, steps_done: int, epochs_done: int) -> None:
        """Training begins (after data preparation, the size probe, a resume's loading): pace is measured
        from here."""
        self.t_train, self.steps_at_train, self.epochs_at_train = self.clock(), steps_done, epochs_done

    def elapsed(self) -> float:
        return self.elapsed_before + self.clock() - self.t0

    def training_time(self) -> float:
        return self.clock() - (self.t0 if self.t_train is None else self.t_train)

    def exhausted(self, step_s: float = 0.0) -> bool:
        """Training must stop: stepping on (a step takes `step_s`) would end further past the training
        time than stopping now ends before it."""
        done = self.enabled and self.elapsed() + step_s / 2 > self.training_seconds
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
    ) -> None:
        """Reserve what runs after training stops: the last epoch's validation pass and checkpoints
        (`save_s`), `report_passes` inference passes over the reported split (its final evaluation, and
        the bf16 agreement's two where it is measured), the report's figures and the process's exit."""
        passes_s = inference_s_per_image * (val_images + report_passes * report_images)
        self.reserve = passes_s + figures_s + save_s + EXIT_MARGIN_S

    def plan(self, steps_done: int) -> int | None:
        """Total optimizer steps that fit in the budget at the pace so far (None: not yet known)."""
        steps = steps_done - self.steps_at_train
        if not self.enabled or steps < 1:
            return None
        per_step = self.training_time() / steps
        return steps_done + int(max(0.0, self.training_seconds - self.elapsed()) / per_step)

    def another_epoch_fits(self, epochs_done: int) -> bool:
        """Start another epoch, to be cut short by the time-out, unless less than LAST_EPOCH_MIN_SHARE of
        an epoch's time is left."""
        if not self.enabled:
            return True
        if self.cut_short:  # the time ran out inside the last epoch: another would train a step past it
            return False
        epoch_time = self.training_time() / max(1, epochs_done - self.epochs_at_train)
        return self.elapsed() + LAST_EPOCH_MIN_SHARE * epoch_time <= self.training_seconds

    def state_dict(self) -> dict:
        return {"elapsed": self.elapsed()}

    def load_state_dict(self, state: dict) -> None:
        self.elapsed_before = float(state["elapsed"])
