"""The fp32 ONNX export of a checkpoint folder that ONNX Runtime runs, exported once into the user cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import torch

from ..errors import VitkitError
from ..export.onnx import DEFAULT_OPSET


def cached_onnx_export(checkpoint_dir: Path, clf, notice: Callable[[str], None] | None = None) -> Path:
    """The fp32 ONNX export of a checkpoint folder's classifier `clf`: exported on first use into the user
    cache (`onnx_cache_path`), then read from there; `notice` hears of the export before it starts."""
    from ..export.onnx import export_onnx  # looked up at each call, where tests replace it

    onnx_path = onnx_cache_path(checkpoint_dir)
    if not onnx_path.is_file():
        if notice is not None:
            notice(
                f"exporting {checkpoint_dir} to ONNX for ONNX Runtime, once per checkpoint (cached in "
                f"{onnx_path.parent}; --backend torch runs without it)"
            )
        try:
            export_onnx(clf, onnx_path)
        except OSError as e:
            raise VitkitError(
                f"cannot write the ONNX export of {checkpoint_dir} into {onnx_path.parent} ({e.strerror}): point "
                "XDG_CACHE_HOME at a writable folder, or use --backend torch"
            ) from None
    return onnx_path


def cache_dir() -> Path:
    """Where vitkit keeps files it can rebuild: $XDG_CACHE_HOME/vitkit, else ~/.cache/vitkit."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitkit"


def onnx_cache_path(checkpoint_dir: Path) -> Path:
    """The ONNX export of a checkpoint, keyed by the content of its weights and config, so a checkpoint is
    never written into (a read-only run folder works) and a retrained one never reuses a stale export. A
    folder downloaded from the hub may hold the weights under another name, and its preprocessing apart."""
    digest = hashlib.sha256(f"opset={DEFAULT_OPSET} torch={torch.__version__}\n".encode())
    for name in ("config.json", "model.safetensors", "pytorch_model.bin", "preprocessor_config.json"):
        if not (checkpoint_dir / name).is_file():
            continue
        digest.update(name.encode())
        with open(checkpoint_dir / name, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return cache_dir() / "onnx" / f"{digest.hexdigest()[:32]}.onnx"
