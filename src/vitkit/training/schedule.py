"""The learning-rate schedule and the best-so-far tracker: pure bookkeeping, no tensors, each
serialisable for resuming (the wall-clock budget is in budget.py)."""

from __future__ import annotations

import math


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
