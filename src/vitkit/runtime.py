"""Where models run: device, threads, the CPU's bf16 support and autocast, shared by training and inference."""

from __future__ import annotations

import os
import time

import torch

from .errors import VitkitError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VitkitError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VitkitError(f"--device {name}: no CUDA device is available; use --device cpu")
    return device


# VITKIT_CPU_BF16 overrides the CPU probe: "none" keeps 'auto' in fp32 on any CPU; "AMX" or "AVX512-BF16"
# makes it take bf16 (emulated, slowly, where the CPU lacks it), which is how the test suite covers
# every class of CPU on one machine.
CPU_BF16_ENV = "VITKIT_CPU_BF16"
CPU_BF16_KINDS = ("AMX", "AVX512-BF16")


def cpu_bf16_kind() -> str | None:
    """What multiplies bf16 in this CPU's hardware: "AMX" (matrix tiles), "AVX512-BF16" (vector
    instructions), or None, where bf16 is emulated and slower than fp32, so 'auto' must not pick it."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced:
        if forced.lower() == "none":
            return None
        kind = next((k for k in CPU_BF16_KINDS if k.lower() == forced.lower()), None)
        if kind is None:
            raise VitkitError(f"{CPU_BF16_ENV}={forced!r}: use none, AMX or AVX512-BF16 (or unset it to probe the CPU)")
        return kind
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return None
    return "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else None


def use_bf16(amp: str, device: torch.device) -> bool:
    """bf16 autocast where the hardware has fast bf16, where it speeds up training and inference: CUDA GPUs
    that support it, CPUs with native bf16."""
    if amp == "bf16":
        return True
    if amp != "auto":
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_bf16_kind() is not None


# The least top-1 agreement with fp32 at which a reduced precision is trusted (see eval/agreement.py)
MIN_AGREEMENT = 0.995


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


class Bf16Autocast(torch.nn.Module):
    """A model run under bf16 autocast on its device, giving fp32 logits: inference at bf16 speed with
    the weights kept in fp32, so the same module also serves fp32 references."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        super().__init__()
        self.model, self.device_type = model, device.type

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.model(images).float()


def available_cores() -> int:
    """The cores this process may use: OMP_NUM_THREADS when set (the usual way to share a machine among
    processes), else the CPU affinity mask (a container's or taskset's share), else every core."""
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def setup_threads(threads: int) -> None:
    """torch CPU threads; 0 means every available core."""
    if threads < 0:
        raise VitkitError(f"--threads must be 0 (every core) or a positive count, got {threads}")
    torch.set_num_threads(threads or available_cores())


def process_start() -> float | None:
    """When this process started, on the time.monotonic() clock (Linux: from /proc; None elsewhere), so
    that a --time-budget also covers the interpreter's start and vitkit's imports."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, clock ticks after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    return time.monotonic() - age if 0 <= age < 86400 else None
