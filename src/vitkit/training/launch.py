"""`vitkit train --nproc N [--max-restarts K]`: start N training processes on this machine through torchrun."""

from __future__ import annotations

import os
import subprocess
import sys

from .distributed import collective_timeout

# torchrun's agent shares one store with every start of the workers by default; the keys the process group
# of a failed start left in it make the restarted workers connect to the dead ones' addresses. With this,
# each start's rank 0 hosts a fresh store.
ELASTIC_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


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


def launch_torchrun(nproc: int, argv: list[str], max_restarts: int = 0) -> int:
    """Run `torchrun --standalone --nproc_per_node N --max-restarts K -m vitkit <argv>`: its elastic agent
    with a c10d rendezvous on this machine. If a worker dies the agent stops the others and, while restarts
    are left, starts them all again: each continues from the run's latest last/ (elastic.py); else the run
    folder stays resumable."""
    collective_timeout()  # a bad VITKIT_DIST_TIMEOUT is refused once, here, not by every process it starts
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        f"--max-restarts={max_restarts}",
        "-m",
        "vitkit",
        *strip_nproc(argv),
    ]
    code = subprocess.call(command, env={**os.environ, **ELASTIC_ENV})
    if code != 0:
        tries = f" and its {max_restarts} restart(s)" if max_restarts else ""
        print(
            f"vitkit train: error: a training process failed (exit code {code}){tries}; the other processes were "
            "stopped. Continue the run with --resume (with any --nproc that divides its global batch)",
            file=sys.stderr,
        )
        return 2 if code > 0 else 1
    return 0
