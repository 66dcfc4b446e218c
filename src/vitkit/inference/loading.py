"""`vitkit.load`: a checkpoint folder, an .onnx file or a hub id as a `Classifier`, in the precision and on
the backend that `precision.py` chooses."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import torch

from ..errors import MissingFile, VitkitError
from ..fileio import settled_dir
from ..runfiles import BEST, CHECKPOINTS, CONFIG_NAME
from ..runtime import resolve_device
from .classifier import Classifier
from .onnx_cache import cached_onnx_export
from .onnx_model import OnnxModel
from .precision import InferenceOptions, resolve_precision


def checkpoint_name(path: Path) -> str:
    """A checkpoint's name for people: its run folder's (not best/ or last/), or the .onnx file's."""
    path = path.resolve()
    if path.suffix == ".onnx":
        return path.stem
    return path.parent.name if path.name in CHECKPOINTS else path.name


def checkpoint_folder(path: Path) -> Path:
    """The folder holding the weights: a run's best/ when given the run, else `path`."""
    best = settled_dir(path / BEST)
    return best if (best / CONFIG_NAME).is_file() else path


def load(
    checkpoint: str | os.PathLike,
    device: str = "auto",
    backend: str = "auto",
    precision: str = "auto",
    threads: int = 0,
    notice: Callable[[str], None] | None = None,
    reject_unknown: bool = False,
    unknown_method: str = "auto",
) -> Classifier:
    """Load a checkpoint folder (a run's best/ or last/, the run folder itself, or a Hugging Face folder
    `vitkit export --format hf` wrote), an exported .onnx file (fp32 or INT8), or a hub id (owner/name: a
    model pushed with `vitkit push`, or a Hugging Face or timm ViT classifier; through huggingface_hub and
    its cache).

    precision="auto" runs bf16 where the hardware multiplies it natively (AMX, AVX512-BF16, CUDA) and the
    checkpoint's bf16 agreement with fp32 on held-out images, recorded at the end of its training run or
    by `vitkit eval --precision bf16`, reaches `MIN_AGREEMENT`; fp32 elsewhere, and for a checkpoint with
    no such record. "fp32" and "bf16" are taken as asked. The
    choice and its reason are `Classifier.precision` and `.precision_reason`. An .onnx file runs in the
    precision it was exported in. backend="auto" takes PyTorch for bf16 and ONNX Runtime (when
    installed) for fp32 on a CPU, whichever `default_backend` says; "onnxruntime" exports a checkpoint
    folder once into the user cache folder (`onnx_cache_path`); with "auto", a failed export (a read-only
    cache folder, an exporter error) leaves the model on PyTorch. threads: CPU threads (0: every core).
    A multi-label checkpoint saved before its first validation (a run's early last/) predicts at 0.5 for
    every label until its thresholds are tuned. notice: called with a line before that one-time export,
    which takes seconds, and with what was assumed or fallen back to (default: a warning).

    Probabilities are calibrated: the logits are divided by the temperature fitted on the checkpoint's
    validation split (`Classifier.temperature`; 1 for a checkpoint without one). reject_unknown answers
    "unknown" for images whose `unknown_method` score is below the threshold recorded with the checkpoint
    (`Classifier.reject_unknown`); knn reads the model's features, so backend="auto" then runs PyTorch."""
    InferenceOptions(device, backend, precision, threads, reject_unknown, unknown_method).validate()
    classifier = _load(checkpoint, device, backend, precision, threads, notice, reject_unknown, unknown_method)
    return classifier.reject_unknown(unknown_method) if reject_unknown else classifier


def _load(checkpoint, device, backend, precision, threads, notice, reject_unknown, unknown_method) -> Classifier:
    # the model families and pretrained loaders load with the first checkpoint, not with `import vitkit`
    from ..models.io import check_preprocessing
    from ..pretrained import download_checkpoint, is_hub_id, load_classifier_folder

    if threads:
        torch.set_num_threads(threads)
    path = Path(checkpoint)
    if not path.exists() and is_hub_id(checkpoint):
        name, path = str(checkpoint), download_checkpoint(str(checkpoint))
    elif not path.exists():
        raise MissingFile(f"checkpoint {path} does not exist")
    elif path.suffix == ".onnx":
        if precision == "bf16":
            raise VitkitError(f"--precision bf16: {path} runs in the precision it was exported in; use auto or fp32")
        onnx_model = OnnxModel(path, threads)
        if not onnx_model.meta.get("preprocessing"):
            raise VitkitError(f"{path} has no vitkit metadata: export it with `vitkit export`")
        check_preprocessing(
            onnx_model.meta["preprocessing"],
            lambda problem: VitkitError(f"{path}: its vitkit metadata's {problem}; export it again (vitkit export)"),
        )
        return Classifier(onnx_model, onnx_model.meta, name=checkpoint_name(path))
    else:
        name, path = checkpoint_name(path), checkpoint_folder(path)
    asked_backend = backend
    if reject_unknown and backend == "auto" and _rejects_with_features(path, unknown_method):
        backend = "torch"  # ONNX Runtime gives no features
    chosen, why, backend = resolve_precision(precision, backend, resolve_device(device), path, str(checkpoint))
    model, meta = load_classifier_folder(path)
    meta = _with_thresholds(meta, model.config.num_classes, name, notice)
    if backend == "onnxruntime":
        try:
            onnx_path = cached_onnx_export(path, Classifier(model, meta, "cpu"), notice)
            return Classifier(OnnxModel(onnx_path, threads), meta, name=name, precision_reason=why, folder=path)
        except Exception as e:  # with auto, PyTorch runs the same model: the notice says why it does
            if asked_backend != "auto":
                raise
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            _tell(notice, f"running {name} on PyTorch: the ONNX export for ONNX Runtime failed ({reason})")
    return Classifier(model, meta, device, chosen, name, why, path)


def _rejects_with_features(folder: Path, method: str) -> bool:
    from ..eval.ood import FEATURE_METHODS
    from ..fileio import read_json

    config = folder / "config.json"
    recorded = (read_json(config).get("ood") or {}).get("method") if config.is_file() else None
    return (recorded if method == "auto" else method) in FEATURE_METHODS


def _tell(notice: Callable[[str], None] | None, line: str) -> None:
    """`line` to the caller's notice, else as a warning (a Python caller sees it once)."""
    if notice is not None:
        notice(line)
    else:
        warnings.warn(line, stacklevel=3)


def _with_thresholds(meta: dict, num_classes: int, name: str, notice: Callable[[str], None] | None) -> dict:
    """A multi-label checkpoint's metadata with a threshold per label: one saved before its first
    validation has none tuned yet (recorded as 0.5 and thresholds_tuned false, or, before vitkit recorded
    that, as none) and predicts at 0.5, which `notice` hears."""
    from ..pretrained import UNTUNED_THRESHOLD

    if not meta.get("multi_label"):
        return meta
    if meta.get("thresholds") is None:
        meta = {**meta, "thresholds": [UNTUNED_THRESHOLD] * num_classes, "thresholds_tuned": False}
    if meta.get("thresholds_tuned") is False:
        _tell(
            notice,
            f"{name} was saved before its first validation, so its thresholds are not tuned yet: every label "
            f"is predicted at {UNTUNED_THRESHOLD}",
        )
    return meta
