"""Training: `train(cfg)` runs a configuration into a run folder; `resume_config` continues one."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..errors import VitkitError
from . import elastic
from .budget import TimeBudget
from .build import Runtime
from .config import TrainConfig
from .distributed import shutdown
from .engine import INTERRUPT_REQUESTED, Trainer
from .resolve import default_run_dir, resume_config
from .rundir import RunDir


def _raise_interrupt(signum, frame):
    INTERRUPT_REQUESTED.set()  # kept for the training loop, should this raise land in a finalizer
    raise KeyboardInterrupt


def check_out_outside_data(cfg: TrainConfig) -> None:
    """A run folder inside the image folder it trains on would be read back as data (its figures as
    images of a class) by the next run on that folder: refused before the folder is made."""
    data, out = Path(cfg.data).resolve(), Path(cfg.out or default_run_dir(cfg)).resolve()
    if data.is_dir() and (out == data or data in out.parents):
        where = f"--out {cfg.out}" if cfg.out else f"the default run folder {out}"
        raise VitkitError(
            f"{where} is inside --data {cfg.data}: its figures and checkpoints would become part of the "
            "dataset; choose an --out outside the data folder"
        )


def train(cfg: TrainConfig, callbacks=(), started: float | None = None) -> dict[str, Any]:
    """Claim the run folder, build the run, fit it; the folder's status says how it ended. SIGTERM
    ends a run as Ctrl-C does: recorded as interrupted, resumable. `callbacks`: see callbacks.py.
    `started`: when the command began (time.monotonic()), so that --time-budget covers all of it; default now."""
    budget = TimeBudget(cfg.time_budget, started=started)
    runtime = Runtime.create(cfg)
    ctx = runtime.ctx
    run = None
    if ctx.is_main:
        check_out_outside_data(cfg)
        cfg, run, runtime.global_batch = elastic.claim(cfg, ctx.world_size)
    # every rank trains what rank 0 claimed: a restarted elastic job continues its own run (elastic.py)
    path, cfg, runtime.global_batch = ctx.broadcast_object((str(run.path), cfg, runtime.global_batch) if run else None)
    run = run or RunDir(path, writer=False)
    marker = elastic.enter(run, ctx)
    on_main_thread = threading.current_thread() is threading.main_thread()
    INTERRUPT_REQUESTED.clear()
    # SIGTERM ends a run as Ctrl-C does, on every rank: an elastic agent stops a failure's survivors with it, and
    # they end through `finally` (their markers removed); Ctrl-C only where it raises KeyboardInterrupt
    handled = [signal.SIGTERM]
    handled += [signal.SIGINT] if signal.getsignal(signal.SIGINT) is signal.default_int_handler else []
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in handled} if on_main_thread else {}
    trainer = None
    if ctx.is_main and not cfg.quiet:  # decoding a large folder takes a while: say what is happening
        print(f"vitkit train: preparing {cfg.data} and the model", file=sys.stderr, flush=True)
    try:
        trainer = Trainer(cfg, runtime, budget)
        result = trainer.fit(run, callbacks)
        # Rank 0 still writes results and plots after the last collective; a rank that tore down its gloo
        # connections meanwhile could abort ("terminate called without an active exception") and fail the run.
        ctx.barrier()
        elastic.leave(marker)
        return result
    except BaseException as e:
        reason = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        elastic.leave(marker, reason)
        if cfg.resume and not run.status_written:  # the attempt never began: the folder keeps its run's status
            if ctx.is_main:
                print(
                    f"run folder {run.path} is unchanged: the resume stopped before it began ({reason})",
                    file=sys.stderr,
                )
            raise
        unsaved = trainer.checkpoints.settle() if trainer else None
        if unsaved is not None and ctx.is_main:
            print(f"the last last/ was not written ({type(unsaved).__name__}: {unsaved})", file=sys.stderr)
        info = trainer.run_info() if trainer else {"world_size": ctx.world_size}
        run.write_status("failed", info, error=reason)
        if trainer:
            trainer.callbacks.failed(e)
        if ctx.is_main:
            saved = run.find_last() is not None
            advice = f"continue it with `vitkit train --out {run.path} --resume`" if saved else "nothing was saved"
            print(f"run folder {run.path} is incomplete ({reason}); {advice}", file=sys.stderr)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        run.release()
        trainer = None  # the DDP wrapper's reducer holds gloo work: shutdown frees it before the process exits
        shutdown(ctx)


__all__ = ["train", "resume_config", "Trainer", "TrainConfig"]
