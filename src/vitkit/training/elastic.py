"""Runs that outlive a lost process or node. Under torchrun's elastic agent (`vitkit train --nproc N
--max-restarts K`, or torchrun with --max-restarts and --nnodes MIN:MAX on each node) a failed worker makes
the agent stop and start every worker again, possibly with fewer or more of them. Each start of a worker
finds its run by the job's id (torchrun's --rdzv-id, which --standalone draws afresh for each launch):
run.json records it, so a start that finds its own job's folder continues from its latest last/ with no
flag from the user, and records the restart in run.json (when, from which step, the world size and nodes
before and after, which ranks died and what the others said). The global batch is the run's whatever the world size
(build.batch_sizes), so the step, the schedule and the data order carry over (state.py)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runfiles import RUN_RECORD
from .config import RESUMABLE, TrainConfig
from .distributed import DistContext
from .resolve import default_run_dir
from .rundir import RunDir

if TYPE_CHECKING:
    from .engine import Trainer


# A file per rank of an elastic job's current start in the run folder: removed when the rank finishes, given
# the error when it fails (an error of its own or a peer's, "interrupted" by the agent's SIGTERM). A restart
# reads what is left: a file without an error names a rank that died outright (killed, crashed).
MARKER_PREFIX = ".live-rank"


def elastic_run_id() -> str | None:
    """The job's id, set by torchrun's elastic agent for its workers."""
    return os.environ.get("TORCHELASTIC_RUN_ID")


def read_status(folder: Path) -> dict[str, Any]:
    try:
        status = json.loads((folder / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def own_folder(cfg: TrainConfig, run_id: str) -> Path | None:
    """The folder an earlier start of this job trains into: --out, or the default folder or one of its
    numbered siblings, whose run.json names this job."""
    if cfg.out:
        candidates = [Path(cfg.out)]
    else:
        default = default_run_dir(cfg)
        candidates = [default, *sorted(default.parent.glob(f"{default.name}-*"))] if default.parent.is_dir() else []
    return next((path for path in candidates if read_status(path).get("elastic_run_id") == run_id), None)


def claim(cfg: TrainConfig, world_size: int) -> tuple[TrainConfig, RunDir, int | None]:
    """Rank 0: the run folder claimed, the configuration this start trains with (a restart of an elastic
    job: its saved one, resumed) and the global batch a resumed run keeps."""
    from . import resume_config

    run_id = elastic_run_id()
    folder = own_folder(cfg, run_id) if run_id and not cfg.resume else None
    if folder is None:
        run = RunDir.claim(cfg.out, default_run_dir(cfg), cfg.resume)
        previous = read_status(run.path) if cfg.resume else {}
        if previous.get("restarts"):  # resumed by hand: the restarts of its earlier starts stay on record
            run.elastic["restarts"] = previous["restarts"]
    else:
        run = RunDir.claim(str(folder), folder, resume=True)
        previous = read_status(folder)
        if run.find_last() is not None:
            cfg = resume_config(folder, **{name: getattr(cfg, name) for name in RESUMABLE})
        else:  # the job's first start failed before its first last/: it starts over in the same folder
            cfg = replace(cfg, out=str(folder))
        markers = sorted(folder.glob(f"{MARKER_PREFIX}*"))
        ended = [{"rank": int(m.name.removeprefix(MARKER_PREFIX)), **read_marker(m)} for m in markers]
        for marker in markers:
            marker.unlink()
        restart = {
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "restart": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            "world_size_before": previous.get("world_size"),
            "world_size": world_size,
            "nodes_before": previous.get("nodes"),
            # the ranks that died without a word (killed, crashed), when any did, and what the others said
            "failed": [{"rank": e["rank"], "node": e["node"]} for e in ended if e["error"] is None] or None,
            "errors": [e for e in ended if e["error"] is not None] or None,
            "continued_from": None,  # filled in once last/ is loaded (continued_from)
        }
        run.elastic["restarts"] = [*previous.get("restarts", []), restart]
    if run_id:
        run.elastic["elastic_run_id"] = run_id
    kept = previous.get("global_batch_size") if cfg.resume else None
    return cfg, run, kept


def read_marker(marker: Path) -> dict[str, Any]:
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return {"node": None, "error": None}


def leave(marker: Path | None, error: str | None = None) -> None:
    """A rank ends: its marker removed, or given its error."""
    if marker is None:
        return
    if error is None:
        marker.unlink(missing_ok=True)
    else:
        marker.write_text(json.dumps({**read_marker(marker), "error": error}))


def node_name() -> str:
    """This worker's node: its host and its elastic agent (the worker's parent), so that agents sharing a
    host count as the nodes they stand for."""
    return f"{platform.node()}:{os.getppid()}"


def enter(run: RunDir, ctx: DistContext) -> Path | None:
    """Every rank: its node in run.json (a collective), and under an elastic agent its marker, which
    the caller removes as the rank ends; a restart's record says which nodes it lost."""
    marker = None
    if elastic_run_id():
        marker = run.path / f"{MARKER_PREFIX}{ctx.rank}"
        marker.write_text(json.dumps({"node": node_name(), "error": None}))
    nodes = ctx.all_gather_object(node_name())
    run.elastic["nodes"] = nodes
    restarts = run.elastic.get("restarts")
    if restarts and restarts[-1]["nodes_before"]:
        restarts[-1]["nodes_lost"] = sorted(set(restarts[-1]["nodes_before"]) - set(nodes))
    return marker


def continued_from(trainer: Trainer, epoch: int, batch: int) -> None:
    """After last/ is loaded: where the run continues, in the restart's record, and in the log when the
    world size changed."""
    state, run = trainer.state, trainer.run
    position = {"step": state.step, "epoch": epoch + 1, "batch": batch, "images_trained": state.images_trained}
    restarts = run.elastic.get("restarts")
    if restarts and restarts[-1]["continued_from"] is None:
        restarts[-1]["continued_from"] = position
    before, now = state.resumed_world_size, trainer.ctx.world_size
    if trainer.ctx.is_main and not trainer.cfg.quiet:
        changed = ""
        if before is not None and before != now:
            setup = trainer.setup
            changed = (
                f"; world size {before} -> {now}: the global batch stays {setup.global_batch} "
                f"({setup.local_batch} per process, was {setup.global_batch // before}), the schedule and the "
                "data order continue"
            )
        print(
            f"vitkit train: continuing at epoch {epoch + 1}, batch {batch} (step {state.step}, "
            f"{state.images_trained} images trained){changed}",
            file=sys.stderr,
            flush=True,
        )
