"""`vitkit train --nproc N`: start N training processes on this machine through torchrun."""

from __future__ import annotations

import subprocess
import sys


def strip_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Run `torchrun --standalone --nproc_per_node N -m vitkit <argv>`; if a worker dies torchrun stops
    the others, and the run folder stays resumable."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "vitkit",
        *strip_nproc(argv),
    ]
    code = subprocess.call(command)
    if code != 0:
        print(
            f"vitkit train: error: a training process failed (exit code {code}); the other processes were "
            "stopped. Continue the run with --resume and the same --nproc",
            file=sys.stderr,
        )
        return 2 if code > 0 else 1
    return 0
