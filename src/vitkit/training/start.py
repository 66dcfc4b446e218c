"""The start of a run, before its first epoch: a resumed run's last/ loaded, the start-up summary, the
run folder's config and status, the callbacks, the training-batch figure and the time budget's first
reserve for the end of the run."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..errors import MissingFile
from ..models.io import load_model
from ..runfiles import TRAIN_BATCH_FIGURE
from .budget import reserve_for_finish, time_inference
from .callbacks import Callbacks, make_trackers
from .elastic import continued_from
from .rundir import RunDir
from .summary import startup_summary

if TYPE_CHECKING:
    from .engine import Trainer

def start_run(trainer: Trainer, run: RunDir, callbacks) -> tuple[int, int]:
    """What comes before the first epoch: last/ loaded when resuming, the start-up summary, the run folder's
    config and status, the callbacks, the training-batch figure and the budget's first reserve;
    returns the (epoch, batch) to start from."""
    cfg, ctx = trainer.cfg, trainer.ctx
    trainer.run = run
    start_epoch, start_batch = load_last(trainer) if cfg.resume else (0, 0)
    if ctx.is_main and not cfg.quiet:
        print(startup_summary(trainer, start_epoch), file=sys.stderr, flush=True)
    run.write_config(cfg)
    run.write_status("running", trainer.run_info())
    run.write_skipped(trainer.setup.bad_images)
    trainer.callbacks = Callbacks([*make_trackers(cfg.log), *callbacks] if ctx.is_main else [])
    trainer.callbacks.call("on_train_begin", run.path, cfg.to_dict(), [dict(row) for row in trainer.state.history])
    if ctx.is_main and cfg.plots:  # imported now, in the start-up, so that no figure's time includes it
        from ..viz import plots  # noqa: F401
    t_figure = trainer.budget.clock()
    # else resumed: the figure's time, measured when it was drawn, came back with the state
    if ctx.is_main and cfg.plots and not (run.path / TRAIN_BATCH_FIGURE).exists():
        from ..viz.report import write_train_batch

        write_train_batch(
            run.path / TRAIN_BATCH_FIGURE, trainer.data.train, trainer.augment, trainer.augmented_batch,
            trainer.data.class_names, cfg.seed, trainer.device,
        )
        # one figure's drawing time stands for each of the report's figures
        trainer.state.figure_s = trainer.budget.clock() - t_figure
    if cfg.time_budget:
        trainer.inference_s_per_image = time_inference(trainer)
        reserve_for_finish(trainer)
    return start_epoch, start_batch


def load_last(trainer: Trainer) -> tuple[int, int]:
    """Weights and state of last/; returns (epoch, next batch) to continue from."""
    last = trainer.run.find_last()
    if last is None:
        raise MissingFile(
            f"nothing to resume in {trainer.run.path}: no last/ checkpoint (the run never "
            "finished one); start it again without --resume"
        )
    saved, meta = load_model(last)
    trainer.model.load_state_dict(saved.state_dict())
    if trainer.multi_label and meta.get("thresholds_tuned", True):  # kept for the next mid-epoch last/
        trainer.thresholds = meta.get("thresholds")
    state = trainer.run.load_trainer_state(last)
    trainer.state.load_state_dict(state)
    continued_from(trainer, state["epoch"], state["next_batch"])
    return state["epoch"], state["next_batch"]
