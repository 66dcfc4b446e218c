"""The run folder: claimed by one process before any work, every file written atomically, its
status honest (running | complete | failed with the reason). What it holds: `vitkit.runfiles`."""

from __future__ import annotations

import csv
import datetime
import fcntl
import io
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml

from .. import __version__
from ..errors import VitkitError
from ..fileio import atomic_path, replace_dir, settled_dir, write_json
from ..models import save_model
from ..options import flag, name_list
from ..runfiles import ARGS, LAST, LOCK, METRICS, RESULTS, RUN_MARKERS, RUN_RECORD, SKIPPED_IMAGES, TRAINER_STATE
from .config import NOT_RECORDED, TrainConfig

LOCK_WAIT_S = 5.0


def _column_rank(name: str) -> int:
    return 0 if name == "epoch" else 1 if name.startswith("train_") else 2 if name.startswith("val_") else 3


class StoppedBy:
    """What ended a run, as run.json and results.json record it (`stopped_by`): --epochs, or the option
    that ended it sooner."""

    EPOCHS = "epochs"
    TIME_BUDGET = "time_budget"
    EARLY_STOPPING = "early_stopping"


STOP_REASONS = {
    StoppedBy.EPOCHS: "reaching --epochs",
    StoppedBy.TIME_BUDGET: "the --time-budget clock",
    StoppedBy.EARLY_STOPPING: flag(StoppedBy.EARLY_STOPPING),
}


def _lock_within(fd: int, seconds: float) -> bool:
    """Take an exclusive lock, waiting a moment for a process that is still exiting to drop it."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def _git_commit() -> str | None:
    """The commit of the working directory's git checkout (the user's code), when there is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class RunDir:
    """Rank 0 writes; on other ranks (`writer=False`) every write is skipped."""

    def __init__(self, path: Path, writer: bool = True, lock: int | None = None):
        self.path, self.writer, self._lock = Path(path), writer, lock
        self.status_written = False  # by this process: until then a resumed folder holds only its earlier run
        self.started = _now()
        self.git_commit = _git_commit() if writer else None
        # what run.json keeps across the starts of an elastic run: its job's id, its nodes, its restarts (elastic.py)
        self.elastic: dict[str, Any] = {}

    @classmethod
    def claim(cls, out: str | None, default: Path, resume: bool) -> "RunDir":
        """Take the folder for this process, atomically and before anything is loaded: an exclusive
        lock held until the process ends (so two runs, or a run and its resume, never share it), and
        for a new run a folder that holds no earlier run."""
        if out is None and not resume:  # runs/<name>, numbered when taken: mkdir is the atomic claim
            path, i = default, 2
            path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                try:
                    path.mkdir()
                    break
                except FileExistsError:
                    path, i = default.with_name(f"{default.name}-{i}"), i + 1
        else:
            path = Path(out) if out else default
            if path.exists() and not path.is_dir():
                raise VitkitError(f"--out {path} is a file, not a folder: choose a new folder for the run")
            path.mkdir(parents=True, exist_ok=True)
            held = sorted(p.name for p in path.iterdir() if p.name != LOCK)
            if not resume and held and not RUN_MARKERS & set(held):  # refused before the lock file is left there
                raise VitkitError(
                    f"--out {path} already holds files that are not a vitkit run ({name_list(held, 3)}): "
                    "choose a new or empty folder for the run"
                )
        lock = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        if not _lock_within(lock, LOCK_WAIT_S):
            os.close(lock)
            raise VitkitError(f"run folder {path} is in use by another vitkit process: choose another --out")
        if not resume and any(p.name != LOCK for p in path.iterdir()):
            os.close(lock)
            raise VitkitError(
                f"run folder {path} already holds a run: pass --resume to continue it, or choose another --out"
            )
        return cls(path, lock=lock)

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # -- status and records ----------------------------------------------------------------
    def write_config(self, cfg: TrainConfig, ran: tuple[int, str] | None = None) -> None:
        """args.yaml: the configuration as requested, so that `--config args.yaml` repeats the run (where
        the run went, NOT_RECORDED, is left out: a repeat goes to its own --out). A
        finished run adds a comment saying how many epochs it trained and why it stopped
        (`ran`: epochs, stop reason), as run.json and results.json record."""
        if not self.writer:
            return
        header = ""
        if ran is not None:
            epochs, stopped_by = ran
            header = (
                f"# As requested. The run trained {epochs} epoch(s), stopped by {STOP_REASONS[stopped_by]}; "
                "see epochs_run in run.json and results.json.\n"
            )
        with atomic_path(self.path / ARGS) as tmp:
            recorded = {k: v for k, v in cfg.to_dict().items() if k not in NOT_RECORDED}
            tmp.write_text(header + yaml.safe_dump(recorded, sort_keys=False))

    def write_status(self, status: str, info: dict[str, Any], error: str | None = None) -> None:
        if not self.writer:
            return
        record = {
            "status": status,
            "run_dir": str(self.path),
            **info,
            **self.elastic,
            "started": self.started,
            "updated": _now(),
            "versions": {"vitkit": __version__, "torch": torch.__version__, "python": platform.python_version()},
            "host": platform.node(),
            "git_commit": self.git_commit,
        }
        if error:
            record["error"] = error
        write_json(self.path / RUN_RECORD, record)
        self.status_written = True

    def write_skipped(self, bad_images: list[str]) -> None:
        if self.writer and bad_images:
            with atomic_path(self.path / SKIPPED_IMAGES) as tmp:
                tmp.write_text("\n".join(bad_images) + "\n")

    def write_metrics(self, history: list[dict]) -> None:
        if not self.writer:
            return
        buffer = io.StringIO()
        # the columns are the rows' own (a multi-label run has mAP columns and no top-k ones): the epoch, its
        # training metrics, its validation metrics, then the rest, each in the order the rows have them
        fields = sorted(dict.fromkeys(key for row in history for key in row), key=_column_rank)
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
        with atomic_path(self.path / METRICS) as tmp:
            tmp.write_text(buffer.getvalue())

    def write_results(self, results: dict) -> None:
        if self.writer:
            write_json(self.path / RESULTS, results)

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, kind: str, model: nn.Module, meta: dict, trainer_state: dict | None = None) -> None:
        """Write best/ or last/ beside the live one, then swap it in."""
        if not self.writer:
            return
        tmp = self.path / f"{kind}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(model, tmp, **meta)
        if trainer_state is not None:
            with atomic_path(tmp / TRAINER_STATE) as path:
                torch.save(trainer_state, path)
        replace_dir(tmp, self.path / kind)

    def checkpoint(self, kind: str) -> Path:
        return settled_dir(self.path / kind)

    def find_last(self) -> Path | None:
        last = self.checkpoint(LAST)
        return last if (last / TRAINER_STATE).is_file() else None

    def load_trainer_state(self, last: Path) -> dict:
        try:
            return torch.load(last / TRAINER_STATE, map_location="cpu", weights_only=True)
        except Exception as e:
            raise VitkitError(
                f"{last / TRAINER_STATE} cannot be read ({type(e).__name__}: {str(e).splitlines()[0]}); the "
                "file is damaged: start the run again without --resume, or restore the file"
            ) from None


def checkpoint_metadata(cfg: TrainConfig, setup) -> dict:
    """What a checkpoint needs to be used on new images: its class names and the preprocessing that
    training used (see data/preprocess.py), which inference repeats."""
    return {
        "class_names": list(setup.data.class_names),
        "preprocessing": setup.preprocessing.to_dict(),
        "train_config": cfg.to_dict(),
    }
