"""torch.distributed plumbing: process group from torchrun's environment, reductions, rank-0 gating."""

from __future__ import annotations

import ctypes
import datetime
import gc
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import VitkitError

# A rank that dies must not leave the others waiting forever in a collective.
DEFAULT_TIMEOUT_S = 300
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any: ranks must agree on when to stop."""
        if not self.enabled:
            return flag
        t = torch.tensor([float(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast_object(self, obj):
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_rows(self, index: torch.Tensor, *rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every rank's rows (of an evaluation's shard) together, in the split's order: `index` holds the
        split index of each of this rank's rows."""
        if not self.enabled:
            return rows
        parts = self.all_gather_object([t.cpu() for t in (index, *rows)])
        order = torch.cat([part[0] for part in parts]).argsort()
        return tuple(torch.cat([part[i] for part in parts])[order] for i in range(1, len(rows) + 1))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def shard_gatherer(ctx: DistContext, loader):
    """For evaluate_multilabel under several processes: every rank's (scores, targets, loss sum) of its
    shard of `loader` pooled, in the loader's order, on every rank (None in one process)."""
    if not ctx.enabled:
        return None
    index = torch.cat(loader.batch_indices())

    def gather(scores: torch.Tensor, targets: torch.Tensor, loss_sum: float):
        scores, targets = ctx.gather_rows(index, scores, targets)
        return scores, targets, float(ctx.all_reduce_sum(torch.tensor([loss_sum], dtype=torch.float64)))

    return gather


def init_distributed(device_type: str) -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); NCCL for GPU tensors, gloo for CPU ones."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    if restarts and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        raise VitkitError(
            "torchrun --max-restarts needs TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its environment (every node's): "
            "with its shared store, restarted processes find the failed ones' addresses and cannot connect"
        )
    die_with_launcher()
    if not dist.is_initialized():
        backend = "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
            backend = "cpu:gloo,cuda:nccl"  # small CPU-side agreements (stop flags, counts) need gloo
        dist.init_process_group(backend, timeout=collective_timeout())
    return DistContext(rank, world_size, local_rank)


def collective_timeout() -> datetime.timedelta:
    """How long a collective waits for the other processes: VITKIT_DIST_TIMEOUT seconds, else the default."""
    text = os.environ.get("VITKIT_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    if not text.strip().isdigit() or int(text) < 1:
        raise VitkitError(
            f"VITKIT_DIST_TIMEOUT={text!r}: give a whole number of seconds, 1 or more (default {DEFAULT_TIMEOUT_S})"
        )
    return datetime.timedelta(seconds=int(text))


def die_with_launcher() -> None:
    """A rank whose launcher was killed outright (SIGKILL, a crash) must not train on as an orphan,
    holding its run folder and writing into it: Linux delivers SIGKILL to it when its parent dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the launcher died before the call
            os.kill(os.getpid(), signal.SIGKILL)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group. DDP's reducer sits in reference cycles with the model's gradient hooks
    and holds the last gloo work; left to the interpreter's final collection, freeing it takes the GIL
    during finalization and aborts the rank ("terminate called without an active exception"), which
    fails a finished run. Collect it here, while the interpreter is whole."""
    if ctx.enabled and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
