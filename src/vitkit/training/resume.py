"""What `last/trainer.pt` holds besides the weights, so that a resumed run continues exactly: the
optimizer, EMA, schedule and tracker state, the history, and every rank's random generators."""

from __future__ import annotations

import torch

# Before the time budget planned with None, an unplanned schedule was "epochs = 10**6".
UNPLANNED_SENTINEL = 10**6


def capture_state(trainer, epoch: int, next_batch: int) -> dict:
    """Every rank contributes its RNG states (augmentation is seeded per rank); rank 0 writes."""
    rng = {
        "torch_rng": torch.get_rng_state(),
        "aug_rng": trainer.aug_gen.get_state().cpu(),
        "cuda_rng": torch.cuda.get_rng_state(trainer.device) if trainer.device.type == "cuda" else None,
    }
    return {
        "epoch": epoch,
        "next_batch": next_batch,
        "step": trainer.step,
        "world_size": trainer.ctx.world_size,
        "optimizer": trainer.optimizer.state_dict(),
        "ema": trainer.ema.state_dict() if trainer.ema else None,
        "lookahead": trainer.lookahead.state_dict() if trainer.lookahead else None,
        "rank_rngs": trainer.ctx.all_gather_object(rng),
        "global_batch": trainer.setup.global_batch,
        "plateau": trainer.plateau.state_dict(),
        "stopper": trainer.stopper.state_dict(),
        "history": trainer.history,
        "best_epoch": trainer.best_epoch,
        "elapsed": trainer.budget.elapsed(),
        "planned_steps": trainer.planned_steps,
    }


def restore_state(trainer, state: dict) -> tuple[int, int]:
    """Put a captured state back; returns (epoch, next batch) to continue from."""
    if state["world_size"] != trainer.ctx.world_size:
        raise ValueError(
            f"{trainer.run.path} was trained with {state['world_size']} process(es) but is resumed with "
            f"{trainer.ctx.world_size}: resume with --nproc {state['world_size']} so the batches and results match"
        )
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.ema is not None and state["ema"] is not None:
        trainer.ema.load_state_dict(state["ema"])
    if trainer.lookahead is not None and state.get("lookahead") is not None:
        trainer.lookahead.load_state_dict(state["lookahead"])
    trainer.step, trainer.history, trainer.best_epoch = state["step"], state["history"], state["best_epoch"]
    trainer.plateau.load_state_dict(state["plateau"])
    trainer.stopper.load_state_dict(state["stopper"])
    trainer.budget.load_state_dict({"elapsed": state["elapsed"]})
    planned = state["planned_steps"]
    if trainer.cfg.time_budget:
        unplanned = planned is None or planned >= UNPLANNED_SENTINEL
        trainer.planned_steps = None if unplanned else planned
    elif planned != trainer.planned_steps:
        # --epochs changed (a finished run extended): the schedule is re-planned over the new length, as if
        # it had been asked for from the start, so the extension decays afresh from where that schedule
        # stands now instead of running at the old schedule's floor
        trainer.replanned_from = planned
    rng = state["rank_rngs"][trainer.ctx.rank]
    torch.set_rng_state(rng["torch_rng"])
    trainer.aug_gen.set_state(rng["aug_rng"])
    if rng["cuda_rng"] is not None:
        torch.cuda.set_rng_state(rng["cuda_rng"], trainer.device)
    return state["epoch"], state["next_batch"]
