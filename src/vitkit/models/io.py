"""Save and load a model as `model.safetensors` + `config.json` (family and typed config)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..fileio import atomic_path, read_json, write_json
from .registry import model_from_config

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


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
        raise ValueError(
            f"cannot read weights from {path}: {e}. The file is truncated or not safetensors; "
            "re-export or re-download it"
        ) from None


def load_model(directory: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model from config.json, load its weights; return (model, the whole config.json)."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"{directory} is not a vitkit checkpoint: expected {CONFIG_NAME} and {WEIGHTS_NAME} "
            "(a run folder's best/ or last/)"
        )
    config_path = directory / CONFIG_NAME
    meta = read_json(config_path)
    if not (isinstance(meta, dict) and isinstance(meta.get("family"), str) and isinstance(meta.get("config"), dict)):
        raise ValueError(
            f"{config_path} is not a vitkit model config: it needs a 'family' name and a 'config' object "
            "(as `vitkit train` writes it); restore the file from the run folder it came from"
        )
    try:
        model = model_from_config(meta["family"], meta["config"])
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{config_path}: cannot build the model it describes ({e})") from None
    class_names = meta.get("class_names")
    num_classes = getattr(model.config, "num_classes", None)
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        raise ValueError(
            f"{config_path} lists {len(class_names)} class names but the model has {num_classes} outputs; "
            "the file was edited or mixed up with another run's"
        )
    weights_path = directory / WEIGHTS_NAME
    check_state_dict(load_weights(weights_path), model, weights_path)
    return model, meta


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
        raise ValueError(
            f"{source} does not fit the model in {CONFIG_NAME} ({'; '.join(problems)}); "
            "the weights and config come from different models"
        )
