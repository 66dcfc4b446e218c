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

import copy
import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import VitkitError
from ..runtime import autocast


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _known(cls, record: dict) -> dict[str, Any]:
    """The entries of `record` that are fields of dataclass `cls`."""
    return {f.name: record[f.name] for f in dataclasses.fields(cls) if f.name in record}


def _present(record) -> dict[str, Any]:
    """A record's fields as plain data of its own (YAML writes a shared mapping as an alias), those not set
    yet (None) left out."""
    values = {f.name: copy.deepcopy(getattr(record, f.name)) for f in dataclasses.fields(record)}
    return {name: value for name, value in values.items() if value is not None}


@dataclass(kw_only=True)
class SizeCandidate:
    """One of a preset's sizes: its changes to the preset's model arguments, the epochs the budget must
    afford for it to be taken, and once measured the epochs it affords here."""

    model_args: dict[str, Any]
    min_epochs: float
    affordable_epochs: float | None = None

    @classmethod
    def from_dict(cls, record: Any, measured: bool) -> SizeCandidate | None:
        """The candidate `record` holds, None when it lacks a part (`affordable_epochs` once `measured`)."""
        try:
            candidate = cls(**_known(cls, record))
        except TypeError:  # not a mapping, or a part missing
            return None
        epochs = (candidate.min_epochs, candidate.affordable_epochs) if measured else (candidate.min_epochs,)
        return candidate if isinstance(candidate.model_args, dict) and all(map(_number, epochs)) else None

    def to_dict(self) -> dict[str, Any]:
        return _present(self)


@dataclass(kw_only=True)
class BudgetSize:
    """The --time-budget size record in a run's configuration (args.yaml's budget_size, also in run.json):
    the candidates, and once chosen the chosen candidate's `model_args` ({} for the preset's own size)."""

    model_args: dict[str, Any] | None = None
    candidates: list[SizeCandidate]

    @property
    def pending(self) -> bool:
        """The choice is still to be made (a new run; a resumed or repeated run has it)."""
        return self.model_args is None

    @classmethod
    def among(cls, sizes: tuple[tuple[float, dict[str, Any]], ...], fixed: dict[str, Any]) -> BudgetSize:
        """A choice to make among a preset's `sizes` (min epochs, changes), leaving out the model arguments
        the user `fixed`."""
        candidates = [
            SizeCandidate(min_epochs=epochs, model_args={k: v for k, v in changes.items() if k not in fixed})
            for epochs, changes in sizes
        ]
        return cls(candidates=candidates)

    @classmethod
    def from_dict(cls, record: Any, source: str) -> BudgetSize | None:
        """The record as --time-budget writes it (`to_dict`), e.g. from a copied args.yaml: `candidates`, each
        {min_epochs, model_args}, and once the size is chosen the chosen `model_args` and each candidate's
        `affordable_epochs`; anything else is refused naming `source`. An empty one is no record."""
        if not record:
            return None
        size = cls(**{"candidates": None, **(_known(cls, record) if isinstance(record, dict) else {})})
        measured = not size.pending
        numbers = "min_epochs and affordable_epochs (numbers)" if measured else "min_epochs (a number)"
        problem = None
        if not isinstance(size.candidates, list):
            problem = "needs candidates: a list of {min_epochs: N, model_args: {...}}"
        elif measured and not isinstance(size.model_args, dict):
            problem = f"model_args is {size.model_args!r}, expected a mapping of model arguments"
        else:
            candidates = [SizeCandidate.from_dict(c, measured) for c in size.candidates]
            if None in candidates:
                number = candidates.index(None)
                problem = (
                    f"candidate {number + 1} is {size.candidates[number]!r}: each needs {numbers} and model_args "
                    "(a mapping)"
                )
        if problem:
            raise VitkitError(
                f"{source} {problem}. It records the size --time-budget chose: remove it to let --time-budget "
                "choose again"
            )
        return dataclasses.replace(size, candidates=candidates)

    def to_dict(self) -> dict[str, Any]:
        return {**_present(self), "candidates": [c.to_dict() for c in self.candidates]}


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
    candidates: list[SizeCandidate],
    rate_of: Callable[[dict[str, Any]], float],
    budget_minutes: float,
    train_images: int,
) -> BudgetSize:
    """The record of the choice: the changes of the largest size whose budget affords at least its
    epochs ({} for the preset's own size) and each candidate's estimate."""
    chosen: dict[str, Any] = {}
    measured = []
    for candidate in candidates:
        epochs = budget_minutes * 60 * rate_of(candidate.model_args) / train_images
        measured.append(dataclasses.replace(candidate, affordable_epochs=round(epochs, 1)))
        if epochs >= candidate.min_epochs:
            chosen = candidate.model_args
    return BudgetSize(model_args=chosen, candidates=measured)
