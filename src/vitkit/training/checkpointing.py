"""last/ during training: when a mid-epoch one is due (--save-every optimizer steps, --save-every-minutes),
and writing it without holding up training. Every rank contributes its random generators (a collective);
rank 0 copies the weights and the state to host memory and writes them in a background thread while
the ranks train on. The next save and the end of the run wait for it. last/ is swapped in whole
(RunDir.save_checkpoint), so a process killed mid-write leaves the previous last/ to continue from."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .distributed import DistContext
from .rundir import RunDir

if TYPE_CHECKING:
    from .engine import Trainer

# optimizer steps between the ranks' agreement on whether --save-every-minutes has passed: one small
# all-reduce every few steps, so that every rank takes part in the same saves
TIME_CHECK_STEPS = 10


class WeightsSnapshot:
    """A model's weights, copied to host memory, with its architecture: what save_model reads of a model."""

    def __init__(self, model: nn.Module):
        self.family, self.config = model.family, model.config
        self.tensors = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.tensors


def host_copy(value: Any) -> Any:
    """`value` with every tensor in it copied to host memory: the live ones change with the next step."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: host_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(host_copy(v) for v in value)
    return value


class Checkpoints:
    def __init__(self, save_every: int, save_every_minutes: float, ctx: DistContext):
        self.every_steps, self.every_s, self.ctx = save_every, save_every_minutes * 60, ctx
        self.last_saved = time.monotonic()
        self.writer: threading.Thread | None = None
        # set by the writer when it is done. Waiting on it, not on Thread.join: a Ctrl-C that interrupts
        # join() before Python 3.13 can mark the thread finished while it still writes (bpo-45274's fix),
        # so a later join returns at once and the process exits under a live writer (an abort).
        self.written = threading.Event()
        self.error: BaseException | None = None
        self.write_s = 0.0  # the latest background write's time

    def due(self, step: int, mid_epoch: bool) -> bool:
        """Whether a mid-epoch last/ is due after optimizer step `step`; the same answer on every rank."""
        if not mid_epoch:
            return False
        if self.every_steps and step % self.every_steps == 0:
            return True
        if self.every_s and step % TIME_CHECK_STEPS == 0:
            return self.ctx.any(time.monotonic() - self.last_saved >= self.every_s)
        return False

    def save_last(self, trainer: Trainer, epoch: int, next_batch: int) -> None:
        """last/ at (epoch, next batch to train); returns once rank 0 has its copy in host memory."""
        t = trainer.budget.clock()
        state = {**trainer.state.state_dict(), "epoch": epoch, "next_batch": next_batch}  # a collective
        self.last_saved = time.monotonic()
        if trainer.run.writer:
            self.wait()
            snapshot = (trainer.run, WeightsSnapshot(trainer.model), trainer.metadata(), host_copy(state))
            self.written.clear()
            self.writer = threading.Thread(target=self._write, args=snapshot, name="vitkit-last-checkpoint")
            self.writer.start()
        # what the end of a --time-budget run keeps for its last save: the copy and a whole write
        trainer.save_s["last"] = trainer.budget.clock() - t + self.write_s

    def _write(self, run: RunDir, weights: WeightsSnapshot, meta: dict, state: dict) -> None:
        t = time.monotonic()
        try:
            run.save_checkpoint("last", weights, meta, state)
        except BaseException as e:  # raised in the training thread by the next wait()
            self.error = e
        finally:
            self.write_s = time.monotonic() - t
            self.written.set()

    def wait(self) -> None:
        """Until the pending last/ is written; its failure is raised here."""
        error = self.settle()
        if error is not None:
            raise error

    def settle(self) -> BaseException | None:
        """Until the pending last/ is written (a run that fails still leaves it whole); returns its failure."""
        if self.writer is not None:
            self.written.wait()
            self.writer = None
        error, self.error = self.error, None
        return error
