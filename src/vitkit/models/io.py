"""Save and load a model as `model.safetensors` + `config.json` (family and typed config)."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import MissingFile, VitkitError
from ..fileio import atomic_path, read_json, write_json
from ..runfiles import CONFIG_NAME, WEIGHTS_NAME
from .registry import FAMILIES, build_config, model_from_config


def save_model(model: nn.Module, directory: str | os.PathLike, **metadata: Any) -> Path:
    """Write weights and config into `directory`; extra metadata (class names, preprocessing) goes in
    config.json beside the architecture."""
    directory = Path(directory)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(directory / CONFIG_NAME, {"family": model.family, "config": model.config.to_dict(), **metadata})
    return directory


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise VitkitError(
            f"cannot read weights from {path}: {e}. The file is truncated or not safetensors; "
            "re-export or re-download it"
        ) from None


def load_model(directory: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model from config.json, load its weights; return (model, the whole config.json)."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise MissingFile(
            f"{directory} is not a vitkit checkpoint: expected {CONFIG_NAME} and {WEIGHTS_NAME} "
            "(a run folder's best/ or last/)"
        )
    config_path = directory / CONFIG_NAME
    meta = read_json(config_path)
    if not (isinstance(meta, dict) and isinstance(meta.get("family"), str) and isinstance(meta.get("config"), dict)):
        raise VitkitError(
            f"{config_path} is not a vitkit model config: it needs a 'family' name and a 'config' object "
            "(as `vitkit train` writes it); restore the file from the run folder it came from"
        )
    model = model_from_config(meta["family"], check_checkpoint_config(meta, config_path))
    class_names = meta.get("class_names")
    num_classes = getattr(model.config, "num_classes", None)
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        raise VitkitError(
            f"{config_path} lists {len(class_names)} class names but the model has {num_classes} outputs; "
            "the file was edited or mixed up with another run's"
        )
    weights_path = directory / WEIGHTS_NAME
    check_state_dict(load_weights(weights_path), model, weights_path)
    return model, meta


# Any dimension of a model vitkit builds is far below this; a config.json beyond it is damaged or hostile.
MAX_DIMENSION = 1 << 20
# fields every family needs at least one of
POSITIVE_FIELDS = ("num_classes", "image_size", "in_chans", "patch_size", "embed_dim")


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_checkpoint_config(meta: dict[str, Any], config_path: Path):
    """The model config of a checkpoint's config.json, checked before anything is allocated: typed as
    its family declares, dimensions in range, a parameter count (counted on the meta device, which
    allocates nothing) whose fp32 weights fit this machine's memory, and preprocessing whose mean and
    std are finite, one per channel, std positive. Returns the typed model config."""

    def refuse(problem: str) -> VitkitError:
        return VitkitError(f"{config_path}: {problem}; restore the file from the run folder it came from")

    if meta["family"] not in FAMILIES:
        raise refuse(f"unknown model family {meta['family']!r} (vitkit has {', '.join(sorted(FAMILIES))})")
    try:
        config = build_config(meta["family"], None, meta["config"])
    except (TypeError, ValueError, KeyError) as e:
        raise refuse(f"cannot build the model it describes ({e})") from None
    for name, value in dataclasses.asdict(config).items():
        numbers = value if isinstance(value, (list, tuple)) else [value]
        for number in numbers:
            if isinstance(number, int) and not isinstance(number, bool) and not 0 <= number <= MAX_DIMENSION:
                raise refuse(f"{name} {number} is out of range (0 to {MAX_DIMENSION:,})")
    for name in POSITIVE_FIELDS:
        if getattr(config, name, 1) < 1:
            raise refuse(f"{name} must be at least 1, got {getattr(config, name)}")
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated or initialised
            parameters = sum(p.numel() for p in model_from_config(meta["family"], config).parameters())
    except (TypeError, ValueError, ZeroDivisionError, RuntimeError) as e:
        raise refuse(f"cannot build the model it describes ({str(e).splitlines()[0]})") from None
    if parameters * 4 > physical_memory():
        raise refuse(
            f"it describes a model of {parameters:,} parameters ({parameters * 4 / 2**30:,.0f} GiB of weights), "
            f"more than this machine's {physical_memory() / 2**30:.0f} GiB of memory"
        )
    check_preprocessing(meta.get("preprocessing"), refuse)
    return config


def check_preprocessing(preprocessing: Any, refuse) -> None:
    if preprocessing is None:
        return
    if not isinstance(preprocessing, dict):
        raise refuse("'preprocessing' must be an object")
    size, channels = preprocessing.get("image_size"), preprocessing.get("channels")
    for name, value in (("image_size", size), ("channels", channels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise refuse(f"preprocessing {name} must be a positive whole number, got {value!r}")
    for name in ("mean", "std"):
        values = preprocessing.get(name)
        if values is None:
            continue
        # one value serves every channel (it broadcasts), as Preprocessing's defaults write it
        if not isinstance(values, list) or not values or (channels is not None and len(values) not in (1, channels)):
            raise refuse(f"preprocessing {name} must list one number, or one per channel, got {values!r}")
        for value in values:
            finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not finite or (name == "std" and value <= 0):
                what = "positive finite numbers" if name == "std" else "finite numbers"
                raise refuse(f"preprocessing {name} must hold {what}, got {values!r}")


def check_state_dict(state: dict[str, torch.Tensor], model: nn.Module, source: Path) -> None:
    """Load `state` into `model` (through its load hooks, which adapt older layouts), or say in one
    line which tensors are missing, extra or of the wrong shape."""
    expected = model.state_dict()
    try:
        missing, extra = model.load_state_dict(state, strict=False)
        wrong = []
    except RuntimeError:  # shapes that do not fit
        missing, extra = [], []
        wrong = [
            f"{k} {tuple(state[k].shape)} (model: {tuple(expected[k].shape)})"
            for k in sorted(set(state) & set(expected))
            if state[k].shape != expected[k].shape
        ]
    problems = [
        f"{what}: {', '.join(items[:3])}{f' and {len(items) - 3} more' if len(items) > 3 else ''}"
        for what, items in (("wrong shape", wrong), ("missing", sorted(missing)), ("unexpected", sorted(extra)))
        if items
    ]
    if problems:
        raise VitkitError(
            f"{source} does not fit the model in {CONFIG_NAME} ({'; '.join(problems)}); "
            "the weights and config come from different models"
        )
