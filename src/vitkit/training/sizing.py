"""`--time-budget` picks a preset's size by this machine's measured speed.

How many epochs a budget buys depends on the hardware: in the same minutes the same model trains
several times the epochs on one CPU as on another of the same core count. A size is worth taking only
when the budget lets it train long enough, so a preset's sizes are keyed by epochs, not minutes: a few
timed steps of each candidate measure its training rate here, and the run takes the largest size whose
budget affords at least its epochs. The choice is recorded in the run's configuration
(args.yaml's budget_size, also in run.json), so a resumed or repeated run rebuilds the architecture it
started with.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..runtime import autocast

# Timed training steps per candidate, after untimed ones (allocation, kernel choice); the median step
# counts, so that one step slowed by the rest of the machine does not move the choice.
WARMUP_STEPS, PROBE_STEPS = 2, 5


def loading_seconds(batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Median seconds to load a batch of the run's own images (decoding from disk when streamed), the same
    for every candidate size; the first batch (the loader's start-up) is not counted."""
    times, start = [], time.perf_counter()
    for i, _ in zip(range(WARMUP_STEPS + PROBE_STEPS), batches):
        now = time.perf_counter()
        if i:
            times.append(now - start)
        start = now
    return statistics.median(times) if times else 0.0


def training_rate(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    augment: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    bf16: bool,
    channels_last: bool,
    loading_s: float,
) -> float:
    """Images/s of `model`'s training step as the run takes it: augmentation of a batch of the run's own
    uint8 images, forward, backward and the optimizer's update (same precision and memory layout), plus
    `loading_s`, a batch's measured loading time. The model's weights and statistics are spent: build anew."""
    model.train()

    def timed_step() -> float:
        start = time.perf_counter()
        x = augment(images)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            loss = F.cross_entropy(model(x).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":  # sync point: the GPU must finish the step
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(WARMUP_STEPS):
        timed_step()
    return len(images) / (statistics.median(timed_step() for _ in range(PROBE_STEPS)) + loading_s)


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
