"""Load pretrained weights from anywhere users keep them.

SOURCE may be a Hugging Face hub id (`google/vit-base-patch16-224-in21k`), a timm hub id
(`timm/vit_small_patch16_224.augreg_in21k`), a local save_pretrained folder, a timm/DeiT weights file
(.safetensors, .pth, .bin) or a vitkit run/checkpoint folder. Hub downloads go through huggingface_hub
(its cache, HF_ENDPOINT and HF_HUB_OFFLINE are honoured); the architecture is read from the checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..data.preprocess import Preprocessing
from ..fileio import read_json
from .checks import load_state_dict_file
from .hf import hf_to_vitkit, is_hf_vit_folder, load_hf_folder, vit_config_from_hf
from .result import Pretrained
from .timm import heads_from_name, is_timm_state, load_timm_state

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _hub_download(repo_id: str) -> Path:
    """Fetch config, preprocessing and weights of a hub repo into the huggingface_hub cache."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise ValueError(
            f"--pretrained {repo_id}: downloading needs huggingface_hub (pip install 'vitkit[hf]')"
        ) from None
    try:
        config = Path(hf_hub_download(repo_id, "config.json"))
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"--pretrained {repo_id}: not in the local Hugging Face cache and the hub cannot be "
            "reached (offline?). Download it once online, or pass a local folder"
        ) from None
    except (HfHubHTTPError, EntryNotFoundError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0]
        raise FileNotFoundError(
            f"--pretrained {repo_id}: no such model on the hub or it has no config.json ({reason})"
        ) from None
    for name in ("preprocessor_config.json",):
        try:
            hf_hub_download(repo_id, name)
        except Exception:  # optional file: absent in many repos
            pass
    for name in WEIGHT_FILES:
        try:
            hf_hub_download(repo_id, name)
            return config.parent
        except Exception:
            continue
    raise FileNotFoundError(f"--pretrained {repo_id}: the repo has neither model.safetensors nor pytorch_model.bin")


def _from_folder(folder: Path, num_heads: int | None) -> Pretrained:
    config = read_json(folder / "config.json")
    if "family" in config:  # a vitkit checkpoint
        from ..models.io import load_model

        model, meta = load_model(folder)
        pre = Preprocessing.from_dict(meta.get("preprocessing") or {}, model.config.image_size, model.config.in_chans)
        return Pretrained(model, pre, meta.get("class_names"), True)
    if "architecture" in config and "model_type" not in config:  # timm's hub layout
        weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{folder} has a timm config.json but no weights file")
        state = load_state_dict_file(weights)
        return load_timm_state(
            state, num_heads or heads_from_name(config["architecture"]), config.get("pretrained_cfg")
        )
    if is_hf_vit_folder(folder):
        return load_hf_folder(folder)
    raise ValueError(f"{folder}/config.json is neither a vitkit, timm nor Hugging Face ViT config")


def load_pretrained(source: str | os.PathLike, num_heads: int | None = None) -> Pretrained:
    """The model with its own preprocessing, class names (or None) and whether its head came along."""
    path = Path(source)
    if path.exists():
        if path.is_dir():
            if (path / "best" / "config.json").is_file():
                path = path / "best"
            if not (path / "config.json").is_file():
                raise ValueError(
                    f"--pretrained {path}: a folder needs config.json (a vitkit checkpoint, a timm "
                    "hub folder or a Hugging Face save_pretrained folder)"
                )
            return _from_folder(path, num_heads)
        state = load_state_dict_file(path)
        if is_timm_state(state):
            return load_timm_state(state, num_heads or heads_from_name(path.name))
        if any(k.startswith(("vit.", "embeddings.")) for k in state):
            raise ValueError(f"{path} holds Hugging Face ViT weights: pass the folder with its config.json")
        raise ValueError(
            f"{path} is not a ViT checkpoint vitkit knows (no patch_embed / blocks keys; first keys: "
            f"{', '.join(list(state)[:5])})"
        )
    if str(source).count("/") == 1 and not str(source).startswith((".", "/")):
        return _from_folder(_hub_download(str(source)), num_heads)
    raise FileNotFoundError(f"--pretrained {source}: no such file or folder, and not a hub id (owner/name)")


__all__ = ["Pretrained", "load_pretrained", "hf_to_vitkit", "vit_config_from_hf"]
