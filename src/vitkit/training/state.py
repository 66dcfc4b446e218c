"""What a run resumes from besides its weights, in one object: the step, the history and best epoch, the
plateau and early-stopping trackers, the optimizer with its Lookahead and EMA companions, the schedule's
length, every rank's random generators and the time budget's clock. `state_dict` is trainer.pt's layout
(flat, as every vitkit version wrote it), so earlier run folders load unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from ..errors import VitkitError
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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put a `state_dict` back (trainer.pt of any vitkit version: lookahead, lookahead_ema and figure_s
        came later)."""
        if state["world_size"] != self.ctx.world_size:
            raise VitkitError(
                f"the run was trained with {state['world_size']} process(es) but is resumed with "
                f"{self.ctx.world_size}: resume with --nproc {state['world_size']} so the batches and results match"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        for name in COMPANIONS:
            if (part := getattr(self, name)) is not None and state.get(name) is not None:
                part.load_state_dict(state[name])
        self.step, self.history, self.best_epoch = state["step"], state["history"], state["best_epoch"]
        self.plateau.load_state_dict(state["plateau"])
        self.stopper.load_state_dict(state["stopper"])
        self.budget.load_state_dict({"elapsed": state["elapsed"]})
        self.figure_s = state.get("figure_s", 0.0)
        planned = state["planned_steps"]
        if self.budget.enabled:
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
