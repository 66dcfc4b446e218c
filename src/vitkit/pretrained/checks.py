"""Reading foreign weight files safely and checking their keys."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ..models.io import load_weights


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a PyTorch file through `torch.load(weights_only=True)`,
    which refuses anything but tensors and plain containers, so no pickled code ever runs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return load_weights(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path} is not a plain weights file: it needs code to be unpickled, which vitkit never "
            f"runs ({str(e).splitlines()[0]}). Convert it to .safetensors with the tool that made it"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"cannot read {path}: truncated or not a PyTorch weights file ({e})") from None
    for key in ("state_dict", "model", "model_ema", "module"):  # common training-script wrappers
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def check_keys(found: set[str], expected: set[str], what: str) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:

        def show(keys):
            return ", ".join(keys[:12]) + (f" and {len(keys) - 12} more" if len(keys) > 12 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        raise ValueError(f"not a {what} checkpoint of this shape; " + "; ".join(parts))
