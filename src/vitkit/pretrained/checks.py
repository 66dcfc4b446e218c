"""Reading foreign weight files safely and checking their keys."""

from __future__ import annotations

import pickle
import pickletools
import re
import zipfile
from pathlib import Path

import torch

from ..errors import MissingFile, VitkitError
from ..models.io import load_weights


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a PyTorch file through `torch.load(weights_only=True)`,
    which refuses anything but tensors and plain containers, so no pickled code ever runs."""
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return load_weights(path)
    not_weights = f"cannot read {path}: truncated or not a PyTorch or safetensors weights file"
    with open(path, "rb") as f:
        head = f.read(1)
    # torch.save writes a zip archive, or (before PyTorch 1.6) a pickle, which opens with its protocol byte
    if not zipfile.is_zipfile(path) and head != pickle.PROTO:
        raise VitkitError(f"{not_weights} (it is neither a zip archive nor a pickle)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if not (named or pickle_imports(path)):
            raise VitkitError(f"{not_weights} (its pickle is damaged or holds no tensors)") from None
        raise VitkitError(
            f"{path} is not a plain weights file: it needs code{f' ({named.group(1)})' if named else ''} to be "
            "unpickled, which vitkit never runs. Convert it to .safetensors with the tool that made it"
        ) from None
    except Exception as e:  # damaged bytes make torch's reader fail in many ways (IndexError, UnicodeError, ...)
        raise VitkitError(f"{not_weights} ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model", "model_ema", "module"):  # common training-script wrappers
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VitkitError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def pickle_imports(path: Path) -> bool:
    """Whether the file's (first) pickle is well formed and imports or calls anything, read opcode by
    opcode without running it."""
    try:
        with open(path, "rb") as f:
            ops = {op.name for op, _, _ in pickletools.genops(f)}
    except Exception:  # not a pickle at all: genops raises whatever the bytes provoke
        return False
    return bool(ops & {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"})


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
        raise VitkitError(f"not a {what} checkpoint of this shape; " + "; ".join(parts))
