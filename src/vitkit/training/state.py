"""What a run resumes from besides its weights, in one object: the step, the history and best epoch, the
plateau and early-stopping trackers, the optimizer with its Lookahead and EMA companions, the schedule's
length, every rank's random generators, the images trained and the time budget's clock. `state_dict` is
trainer.pt's layout (flat, as every vitkit version wrote it), so earlier run folders load unchanged. A state
loads at another world size: the global batch, the step and the data order do not depend on it (see
build.batch_sizes); only the per-rank augmentation generators are drawn afresh."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from .budget import TimeBudget
from .distributed import DistContext
from .optim import Lookahead, LookaheadEMA
from .schedule import Plateau

# The optimizer's optional companions, each saved under its field's name (None when it is off).
COMPANIONS = ("ema", "lookahead", "lookahead_ema")


@dataclass(kw_only=True)
class TrainState:
    optimizer: torch.optim.Optimizer
    ema: AveragedModel | None
    lookahead: Lookahead | None
    lookahead_ema: LookaheadEMA | None
    aug_gen: torch.Generator  # the augmentation's generator (seeded per rank)
    budget: TimeBudget
    plateau: Plateau  # --schedule plateau's reductions
    stopper: Plateau  # best-so-far of the monitored metric: best/ and early stopping
    ctx: DistContext
    device: torch.device
    global_batch: int
    planned_steps: int | None  # the schedule's length; None while a time budget has not fitted it yet
    step: int = 0  # optimizer steps taken
    history: list[dict] = field(default_factory=list)  # one row per epoch
    best_epoch: int = -1
    figure_s: float = 0.0  # one figure's drawing time, for the budget's reserve
    replanned_from: int | None = None  # a resumed schedule's earlier length, when --epochs changed it
    images_trained: int = 0  # over all ranks: what a run that lost and regained processes is checked against
    resumed_world_size: int | None = None  # the world size of the state loaded, when a run was resumed

    def state_dict(self) -> dict[str, Any]:
        """A collective, as every rank contributes its generators."""
        rng = {
            "torch_rng": torch.get_rng_state(),
            "aug_rng": self.aug_gen.get_state().cpu(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        return {
            "step": self.step,
            "world_size": self.ctx.world_size,
            "optimizer": self.optimizer.state_dict(),
            **{name: part.state_dict() if (part := getattr(self, name)) else None for name in COMPANIONS},
            "rank_rngs": self.ctx.all_gather_object(rng),
            "global_batch": self.global_batch,
            "plateau": self.plateau.state_dict(),
            "stopper": self.stopper.state_dict(),
            "history": self.history,
            "best_epoch": self.best_epoch,
            "elapsed": self.budget.elapsed(),
            "planned_steps": self.planned_steps,
            "figure_s": self.figure_s,
            "images_trained": self.images_trained,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put a `state_dict` back (trainer.pt of any vitkit version: lookahead, lookahead_ema, figure_s and
        images_trained came later), at any world size."""
        if state["global_batch"] != self.global_batch:  # build.batch_sizes keeps it: this is a vitkit bug
            raise RuntimeError(f"resumed with a global batch of {self.global_batch}, saved {state['global_batch']}")
        self.resumed_world_size = state["world_size"]
        self.optimizer.load_state_dict(state["optimizer"])
        for name in COMPANIONS:
            if (part := getattr(self, name)) is not None and state.get(name) is not None:
                part.load_state_dict(state[name])
        self.step, self.history, self.best_epoch = state["step"], state["history"], state["best_epoch"]
        self.plateau.load_state_dict(state["plateau"])
        self.stopper.load_state_dict(state["stopper"])
        self.budget.load_state_dict({"elapsed": state["elapsed"]})
        self.figure_s = state.get("figure_s", 0.0)
        self.images_trained = state.get("images_trained", 0)
        planned = state["planned_steps"]
        if self.budget.enabled:
            self.planned_steps = planned
        elif planned != self.planned_steps:
            # --epochs changed (a finished run extended): the schedule is re-planned over the new length, as if
            # it had been asked for from the start, so the extension decays afresh from where that schedule
            # stands now instead of running at the old schedule's floor
            self.replanned_from = planned
        self.load_rngs(state["rank_rngs"])

    def load_rngs(self, rank_rngs: list[dict]) -> None:
        """Each rank's generators as saved; at another world size every rank continues rank 0's torch
        generator (the same on every rank) and draws its augmentation seed from rank 0's augmentation
        generator, so a resumed run is as reproducible as an uninterrupted one."""
        if len(rank_rngs) == self.ctx.world_size:
            rng = rank_rngs[self.ctx.rank]
            torch.set_rng_state(rng["torch_rng"])
            self.aug_gen.set_state(rng["aug_rng"])
            if rng["cuda_rng"] is not None:
                torch.cuda.set_rng_state(rng["cuda_rng"], self.device)
            return
        torch.set_rng_state(rank_rngs[0]["torch_rng"])
        digest = hashlib.sha256(rank_rngs[0]["aug_rng"].numpy().tobytes()).digest()
        draw = torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))
        self.aug_gen.manual_seed(int(torch.randint(2**62, (self.ctx.world_size,), generator=draw)[self.ctx.rank]))
