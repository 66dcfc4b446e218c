"""Where and how models run: device, threads and precision, shared by training and inference."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from .errors import VitkitError
from .options import check_options, option


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
    """bf16 autocast where the hardware has fast bf16 (training and inference speed-ups measured in
    benchmarks/results/throughput*.json and inference.json): CUDA GPUs that support it, CPUs with native bf16."""
    if amp == "bf16":
        return True
    if amp != "auto":
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_bf16_kind() is not None


PRECISIONS = ("auto", "fp32", "bf16")
BACKENDS = ("auto", "torch", "onnxruntime")
# The least top-1 agreement with fp32 at which a reduced precision is trusted (see eval/agreement.py)
MIN_AGREEMENT = 0.995
_MODEL_USERS = ("predict", "serve", "eval", "top-losses", "explain")


@dataclass(frozen=True)
class InferenceOptions:
    """Where and how a trained model runs, declared once for `vitkit.load` and the commands that load a
    checkpoint (`commands`: which of them take each flag); `validate` is the one check of them all."""

    device: str = option("auto", "auto, cpu, cuda or cuda:N", group="inference", commands=_MODEL_USERS)
    backend: str = option(
        "auto",
        "auto: PyTorch for bf16; for fp32 on a CPU, ONNX Runtime when installed (exact), else PyTorch",
        group="inference",
        choices=BACKENDS,
        commands=("predict", "serve"),
    )
    precision: str = option(
        "auto",
        "auto: bf16 where the hardware runs it natively (AMX, AVX512-BF16, CUDA) and the checkpoint's "
        f"recorded bf16 agreement with fp32 on held-out images is at least {MIN_AGREEMENT:.1%} (vitkit train "
        "records it), else fp32; an .onnx file runs as exported. vitkit eval (default fp32, which reproduces "
        "the run's metrics) reports bf16's agreement with fp32 and records it in the checkpoint folder for auto",
        group="inference",
        choices=PRECISIONS,
        commands=("predict", "serve", "eval"),
    )
    threads: int = option(
        0, "CPU threads for the model (0: every core)", group="inference", at_least=0, commands=("predict", "serve")
    )

    def validate(self) -> "InferenceOptions":
        check_options(self)
        return self


def choose_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """(precision, why) for inference: 'auto' takes bf16 where the hardware runs it natively (a CUDA GPU
    with bf16, a CPU with AMX or AVX512-BF16) and fp32 elsewhere; fp32 and bf16 are taken as asked."""
    if requested != "auto":
        return requested, f"{requested} as asked"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: bf16, the GPU runs it natively"
        return "fp32", "auto: fp32, the GPU has no native bf16"
    kind = cpu_bf16_kind()
    if kind is not None:
        return "bf16", f"auto: bf16, the CPU multiplies it natively ({kind})"
    return "fp32", "auto: fp32, the CPU has no native bf16 (AMX or AVX512-BF16), where it would run slower"


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
