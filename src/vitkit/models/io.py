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
    meta = read_json(directory / CONFIG_NAME)
    model = model_from_config(meta["family"], meta["config"])
    model.load_state_dict(load_weights(directory / WEIGHTS_NAME))
    return model, meta
