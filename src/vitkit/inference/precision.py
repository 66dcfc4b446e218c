"""Which precision and backend a loaded model runs in: the inference options of `vitkit.load` and the
commands that load a checkpoint, the hardware's choice of precision, and the checkpoint's bf16 record."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import VitkitError
from ..eval.agreement import bf16_guard
from ..eval.ood import METHODS as OOD_METHODS
from ..options import check_options, option
from ..runtime import MIN_AGREEMENT, cpu_bf16_kind

PRECISIONS = ("auto", "fp32", "bf16")
BACKENDS = ("auto", "torch", "onnxruntime")
_MODEL_USERS = ("predict", "serve", "eval", "top-losses", "explain", "calibrate")


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

    reject_unknown: bool = option(
        False,
        "answer 'unknown' (with the score and the nearest classes) for images unlike the training data: a score "
        "below the threshold that kept 95% of the validation images (set by vitkit train, or vitkit calibrate "
        "for older runs)",
        group="inference",
        commands=("predict", "serve"),
    )
    unknown_method: str = option(
        "auto",
        "the score --reject-unknown compares: auto (the checkpoint's recorded choice), msp (maximum softmax "
        "probability), energy, or knn (distance to the training images' features; PyTorch backend)",
        group="inference",
        choices=("auto", *OOD_METHODS),
        commands=("predict", "serve"),
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


def default_backend() -> str:
    """ONNX Runtime for fp32 on a CPU when installed (it matches eager PyTorch's outputs and runs faster
    there), else PyTorch."""
    has_ort = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnxscript"))
    return "onnxruntime" if has_ort and not torch.cuda.is_available() else "torch"


def resolve_precision(
    precision: str, backend: str, device: torch.device, folder: Path, checkpoint: str
) -> tuple[str, str, str]:
    """(precision, why, backend) a checkpoint folder runs in, as `vitkit.load` documents it: the hardware's
    choice, kept at bf16 under "auto" only when the checkpoint's recorded bf16 agreement is trusted."""
    chosen, why = choose_precision(precision, device)
    if chosen == "bf16" and backend == "onnxruntime":
        if precision == "bf16":
            raise VitkitError("--precision bf16 runs on --backend torch; ONNX Runtime runs the fp32 export")
        chosen, why = "fp32", "auto: fp32, as --backend onnxruntime runs the fp32 export"
    if chosen == "bf16" and precision == "auto":
        trusted, guard = bf16_guard(folder, checkpoint)
        chosen, why = ("bf16", f"{why}; {guard}") if trusted else ("fp32", f"auto: fp32, as {guard}")
    if backend == "auto":
        backend = "torch" if chosen == "bf16" else default_backend()
    return chosen, why, backend
