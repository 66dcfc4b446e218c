"""The learning-rate range test (Smith, "Cyclical Learning Rates", 2017; fastai's lr_find): train a
fresh model for a few hundred steps at most while the learning rate grows exponentially, and watch
the loss. The suggestion is the rate where the smoothed loss falls fastest (steepest descent against
log lr), which sits safely below the rate where it is lowest.

The sweep builds its own model, optimizer and loaders from the configuration, writes no run folder
and leaves the caller's random state as it found it: nothing of it reaches a later training run."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..data.loader import epoch_seed
from ..errors import VitkitError
from ..runtime import resolve_device
from .budget import TimeBudget
from .build import Runtime
from .config import TrainConfig
from .engine import Trainer

SMOOTHING = 0.98  # exponential moving average of the loss, bias-corrected (as fastai)
# A sweep whose smoothed loss never falls below its start by this share shows no descent to read a rate
# from: it was too short, too noisy, or started past the useful rates.
MIN_DROP = 0.05
MIN_LEAD = 3  # points of descent before the minimum that a suggestion needs
DIVERGED = 4.0  # the sweep stops once the smoothed loss exceeds this many times its minimum
METHOD = "steepest descent of the smoothed loss"


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float | None  # None when the curve shows no descent to read a rate from (see `warning`)
    min_loss_lr: float  # where the smoothed loss was lowest; a tenth of it is the other common rule
    diverged: bool
    method: str = METHOD
    warning: str | None = None  # why the suggestion is missing or weak

    def to_dict(self) -> dict:
        return asdict(self)


class _Sweep(Trainer):
    """A Trainer whose learning rate grows exponentially with the step instead of following the
    schedule."""

    def __init__(self, cfg: TrainConfig, start_lr: float, end_lr: float, steps: int):
        super().__init__(cfg, Runtime.create(cfg), TimeBudget(cfg.time_budget))
        self.start_lr, self.end_lr, self.steps = start_lr, end_lr, steps

    def scheduled_lr(self) -> float:
        return self.start_lr * (self.end_lr / self.start_lr) ** (self.state.step / max(self.steps - 1, 1))


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float | None, str | None]:
    """(suggested rate, warning). The rate of steepest descent of the smoothed loss strictly before its
    minimum, within the swept range; the slope is taken on the whole curve, so that the points next to the
    minimum get central differences, not one-sided ones. A curve that never falls by MIN_DROP, or is
    lowest within its first MIN_LEAD points, has no descent to read: no rate, and a warning saying why."""
    lowest = int(np.argmin(smoothed))
    drop = (smoothed[0] - smoothed[lowest]) / max(abs(smoothed[0]), 1e-12)
    span = f"{lrs[0]:.0e} to {lrs[-1]:.0e} in {len(lrs)} steps"
    if lowest < MIN_LEAD:
        return None, (
            f"the loss was lowest at the sweep's start ({lrs[lowest]:.1e}) and rose after it ({span}): lower "
            "--start-lr, or sweep with more --steps"
        )
    if drop < MIN_DROP:
        return None, (
            f"the smoothed loss fell only {max(drop, 0):.1%} over the sweep ({span}): a flat curve suggests no "
            "rate; sweep with more --steps (100 or more), or a --start-lr nearer the rates that train"
        )
    slope = np.gradient(np.asarray(smoothed), np.log10(lrs))
    return float(lrs[int(np.argmin(slope[:lowest]))]), None


def check_sweep(steps: int, start_lr: float, end_lr: float) -> None:
    if steps < 2:
        raise VitkitError(f"--steps must be at least 2, got {steps}")
    if not 0 < start_lr < end_lr:
        raise VitkitError(f"--start-lr ({start_lr}) must be positive and below --end-lr ({end_lr})")


def lr_find(cfg: TrainConfig, steps: int, start_lr: float, end_lr: float) -> LRFindResult:
    """Sweep the learning rate from start_lr to end_lr over `steps` optimizer steps (one batch each),
    stopping early when the loss diverges. Progress goes to stderr: what it prepares, then a line about
    every tenth of the steps."""
    check_sweep(steps, start_lr, end_lr)
    device = resolve_device(cfg.device)
    started = time.perf_counter()

    def say(line: str) -> None:
        print(f"vitkit lr-find: {line} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    say(f"preparing {cfg.data} and a fresh model")
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        sweep = _Sweep(cfg, start_lr, end_lr, steps)
        say(f"sweeping the learning rate from {start_lr:g} to {end_lr:g} over at most {steps} steps")
        every = max(1, steps // 10)
        sweep.aug_gen.manual_seed(cfg.seed)
        sweep.model.train()
        lrs, losses, smoothed, average, diverged, epoch = [], [], [], 0.0, False, 0
        while len(lrs) < steps and not diverged:
            torch.manual_seed(epoch_seed(cfg.seed, epoch, 1))
            for images, labels in sweep.train_loader.batches(epoch):
                lr = sweep.scheduled_lr()
                _, loss = sweep.train_step(sweep.model, images, labels, boundary=True)
                loss = float(loss)
                if not math.isfinite(loss):
                    diverged = True
                    break
                average = SMOOTHING * average + (1 - SMOOTHING) * loss
                lrs.append(lr)
                losses.append(loss)
                smoothed.append(average / (1 - SMOOTHING ** len(lrs)))
                if len(lrs) % every == 0:
                    say(f"step {len(lrs)}/{steps}: lr {lr:.2e}, smoothed loss {smoothed[-1]:.4f}")
                if len(lrs) >= steps or smoothed[-1] > DIVERGED * min(smoothed):
                    diverged = len(lrs) < steps
                    break
            epoch += 1
    if len(lrs) < 2:
        raise FloatingPointError(
            f"the loss was not finite from the first steps of the sweep: raise --steps or lower --start-lr ({start_lr})"
        )
    lowest = int(np.argmin(smoothed))
    suggested, warning = suggest(lrs, smoothed)
    return LRFindResult(lrs, losses, smoothed, suggested, lrs[lowest], diverged, warning=warning)
