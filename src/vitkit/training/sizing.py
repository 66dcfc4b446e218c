"""`--time-budget` picks a preset's size by this machine's measured speed.

How many epochs a budget buys depends on the hardware: in the same 30 minutes the same model trained
four times the epochs on one 2-core CPU as on another (benchmarks/results/time_to_accuracy/
cifar10-train-30min-*.json). A size is worth
taking only when the budget lets it train long enough, so a preset's sizes are keyed by epochs, not
minutes: a few timed steps of each candidate measure its training rate here, and the run takes the
largest size whose budget affords at least its epochs. The choice is recorded in the run's configuration
(args.yaml's budget_size, also in run.json), so a resumed or repeated run rebuilds the architecture it
started with.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..runtime import autocast

# Timed forward+backward steps per candidate, after untimed ones (allocation, kernel choice); the
# median step counts, so that one step slowed by the rest of the machine does not move the choice.
WARMUP_STEPS, PROBE_STEPS = 2, 5


def training_rate(
    model: nn.Module,
    batch: int,
    image_size: int,
    num_classes: int,
    device: torch.device,
    bf16: bool,
    channels_last: bool,
) -> float:
    """Images/s of `model`'s forward and backward on a random batch, as the training step runs them
    (same precision and memory layout). The model's weights and statistics are spent: build anew."""
    channels = model.config.in_chans
    x = torch.randn(batch, channels, image_size, image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(num_classes, (batch,), device=device)
    model.train()

    def timed_step() -> float:
        start = time.perf_counter()
        with autocast(device, bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":  # sync point: the GPU must finish the step
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(WARMUP_STEPS):
        timed_step()
    return batch / statistics.median(timed_step() for _ in range(PROBE_STEPS))


def choose_size(
    sizes: tuple[tuple[float, dict[str, Any]], ...],
    rate_of: Callable[[dict[str, Any]], float],
    budget_minutes: float,
    train_images: int,
) -> dict[str, Any]:
    """The record of the choice: `model_args` (the changes of the largest size whose budget affords
    at least its epochs; {} for the preset's own size) and each candidate's estimate."""
    chosen: dict[str, Any] = {}
    candidates = []
    for min_epochs, changes in sizes:
        epochs = budget_minutes * 60 * rate_of(changes) / train_images
        candidates.append({"model_args": changes, "min_epochs": min_epochs, "affordable_epochs": round(epochs, 1)})
        if epochs >= min_epochs:
            chosen = changes
    return {"model_args": chosen, "candidates": candidates}
