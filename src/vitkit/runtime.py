"""Where and how models run: device, threads and precision, shared by training and inference."""

from __future__ import annotations

import os
import time

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available; use --device cpu")
    return device


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix instructions in hardware. Without them bf16 is emulated and
    slower than fp32, so 'auto' must not pick it."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(amp: str, device: torch.device) -> bool:
    """bf16 autocast where the hardware has fast bf16 (measured on an AVX512-BF16 CPU: training 1.5x,
    inference 2.1x the fp32 images/s): CUDA GPUs that support it, CPUs with native bf16."""
    if amp == "bf16":
        return True
    if amp != "auto":
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


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
        raise ValueError(f"--threads must be 0 (every core) or a positive count, got {threads}")
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
