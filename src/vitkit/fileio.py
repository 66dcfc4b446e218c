"""Atomic file writes: a crash mid-write never leaves a half-written checkpoint or report."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import MissingFile, VitkitError


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask alone must set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            # mkstemp (and writers that replace the file, like safetensors) make it 0600; give the result
            # the mode of any file the user writes, so another account (a serving container) can read it
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingFile(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise VitkitError(f"{path} is not valid JSON ({e}); the file is damaged, restore or delete it") from None


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written folder into place. A crash between the two renames leaves `final.old`,
    which `settled_dir` puts back, so a reader always finds the old or the new folder."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        if final.exists():
            shutil.rmtree(old)
        else:
            old.rename(final)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def settled_dir(final: Path) -> Path:
    """`final`, or its previous copy when a swap was interrupted after moving it aside."""
    old = final.with_name(final.name + ".old")
    return old if not final.exists() and old.is_dir() else final
