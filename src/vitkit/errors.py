"""The one exception type for a user's mistake: `vitkit` prints its message as one line and exits 2. Every
other exception is a bug (or the system's failure) and keeps its traceback."""

from __future__ import annotations

import errno

# The file system's refusals (not vitkit's bugs) that a command reports in one line: what to do about each.
FILE_SYSTEM_REFUSALS = {
    errno.EACCES: "permission denied; check its permissions",
    errno.EPERM: "operation not permitted; check its permissions",
    errno.EROFS: "read-only file system; write somewhere else",
    errno.ENOSPC: "no space left on the device; free some or write somewhere else",
    errno.EDQUOT: "disk quota exceeded; free some space or write somewhere else",
}


class VitkitError(ValueError):
    """A mistake in what the user gave (an option, a file, data): the message says what and how to fix it.
    A ValueError, so callers that catch ValueError around vitkit's API keep working."""


class MissingFile(VitkitError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class TrainingDiverged(VitkitError, FloatingPointError):
    """The training loss became non-finite: the options (learning rate, clipping) or the data need a change."""
