"""Load pretrained weights from anywhere users keep them.

SOURCE may be a Hugging Face hub id (`google/vit-base-patch16-224-in21k`), a timm hub id
(`timm/vit_small_patch16_224.augreg_in21k`), a local save_pretrained folder, a timm/DeiT weights file
(.safetensors, .pth, .bin) or a vitkit run/checkpoint folder. Hub downloads go through huggingface_hub
(its cache, HF_ENDPOINT and HF_HUB_OFFLINE are honoured); the architecture is read from the checkpoint.
"""

from __future__ import annotations

import errno
import importlib
import os
from pathlib import Path

import torch.nn as nn

from ..data.preprocess import Preprocessing
from ..errors import MissingFile, VitkitError
from ..fileio import read_json
from .checks import load_state_dict_file
from .hf import MULTI_LABEL_PROBLEM, hf_to_vitkit, is_hf_vit_folder, load_hf_folder, vit_config_from_hf
from .result import Pretrained
from .timm import heads_from_name, is_timm_state, load_timm_state

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# a multi-label classifier's threshold for every label until thresholds are tuned on validation data
UNTUNED_THRESHOLD = 0.5
# a cache that cannot take the download: said as such, not as a network or hub failure
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def is_hub_id(source: str | os.PathLike) -> bool:
    """Whether a name that is not a local file or folder reads as a hub repo id (owner/name). A missing
    file in a folder that exists here (runs/typo) is a local path, not worth a trip to the hub."""
    text = str(source)
    return (
        text.count("/") == 1
        and not text.startswith((".", "/"))
        and not text.endswith("/")
        and not Path(text).parent.is_dir()
    )


def _hub_download(repo_id: str, label: str | None = None) -> Path:
    """Fetch config, preprocessing and weights of a hub repo into the huggingface_hub cache. `label` starts
    the error messages (default: the --pretrained flag). Only a file the hub says the repo lacks is taken
    as absent; any other failure (network, token, disk) is an error saying what happened."""
    label = label or f"--pretrained {repo_id}"
    try:
        import huggingface_hub
    except ImportError:
        raise VitkitError(f"{label}: downloading needs huggingface_hub (pip install 'vitkit[hf]')") from None
    config = _fetch(huggingface_hub, repo_id, "config.json", label)
    if config is None:
        raise MissingFile(f"{label}: the repo has no config.json, so it holds no model vitkit can load")
    if "model_type" in read_json(config):  # transformers' layout keeps the preprocessing apart
        _fetch(huggingface_hub, repo_id, "preprocessor_config.json", label)
    for name in WEIGHT_FILES:
        if _fetch(huggingface_hub, repo_id, name, label) is not None:
            return config.parent
    raise MissingFile(f"{label}: the repo has neither model.safetensors nor pytorch_model.bin")


def _fetch(hub, repo_id: str, name: str, label: str) -> Path | None:
    """`name` of the hub repo in the local cache, or None when the repo does not have it: the hub answered
    that it has no such file, now or (offline) when it was last asked."""
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hub.hf_hub_download(repo_id, name))
    except EntryNotFoundError as e:
        if not isinstance(e, LocalEntryNotFoundError):
            return None
        if hub.try_to_load_from_cache(repo_id, name) is hub._CACHED_NO_EXIST:
            return None
        raise _download_error(e, name, label) from None
    except (ValueError, *network_errors()) as e:
        raise _download_error(e, name, label) from None


def network_errors() -> tuple[type[BaseException], ...]:
    """A connection that fails, as the HTTP client of the installed huggingface_hub raises it: httpx2
    (2.x), httpx (1.x) or requests (0.x, whose errors are OSErrors)."""
    errors: list[type[BaseException]] = [OSError]
    for client in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(client).TransportError)
        except ImportError:
            pass
    return tuple(errors)


def _download_error(e: Exception, name: str, label: str) -> VitkitError:
    """What went wrong fetching `name`, as one line: offline, no such repo, the token, the hub, the disk."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    if isinstance(e, LocalEntryNotFoundError) and isinstance(e.__cause__, HfHubHTTPError):
        e = e.__cause__  # the hub answered, with an error, and no copy was cached: say what it answered
    reason = _first_line(e)
    if isinstance(e, LocalEntryNotFoundError):
        cause = f" ({_first_line(e.__cause__)})" if e.__cause__ is not None else ""
        return MissingFile(
            f"{label}: {name} is not in the local Hugging Face cache and the hub cannot be reached{cause}. "
            "Download it once online, or pass a local folder"
        )
    if isinstance(e, RepositoryNotFoundError):
        return MissingFile(
            f"{label}: no such model on the hub, or it is private or gated and needs a token that can read it "
            f"(hf auth login, or HF_TOKEN) ({reason})"
        )
    if isinstance(e, HfHubHTTPError):
        status = getattr(e.response, "status_code", None)
        if status in (401, 403):
            return VitkitError(
                f"{label}: the hub refused {name} (HTTP {status}): log in with a token that can read the repo "
                f"(hf auth login, or HF_TOKEN) ({reason})"
            )
        return VitkitError(f"{label}: the hub failed to send {name} and no copy is cached ({reason}); try again later")
    if isinstance(e, OSError) and e.errno in DISK_ERRORS:
        where = e.filename or "the Hugging Face cache"
        return VitkitError(
            f"{label}: cannot store {name} in the Hugging Face cache ({where}: {e.strerror}); free some space or "
            "point HF_HOME at a writable folder"
        )
    if isinstance(e, ValueError):
        return VitkitError(f"{label}: not a hub repo id the hub accepts ({reason})")
    return VitkitError(f"{label}: fetching {name} from the hub failed ({type(e).__name__}: {reason}); try again")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _from_folder(folder: Path, num_heads: int | None, source: str | None = None) -> Pretrained:
    """What the checkpoint folder holds; `source` is what notes call it (a hub id; default: the folder)."""
    config = read_json(folder / "config.json")
    if "family" in config:  # a vitkit checkpoint
        from ..models.io import load_model

        model, meta = load_model(folder)
        pre = Preprocessing.from_dict(meta.get("preprocessing") or {}, model.config.image_size, model.config.in_chans)
        return Pretrained(model, pre, meta.get("class_names"), True)
    if "architecture" in config and "model_type" not in config:  # timm's hub layout
        weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
        if weights is None:
            raise MissingFile(f"{folder} has a timm config.json but no weights file")
        state = load_state_dict_file(weights)
        return load_timm_state(
            state, num_heads or heads_from_name(config["architecture"]), config.get("pretrained_cfg")
        )
    if is_hf_vit_folder(folder):
        return load_hf_folder(folder, source)
    raise VitkitError(f"{folder}/config.json is neither a vitkit, timm nor Hugging Face ViT config")


def load_pretrained(source: str | os.PathLike, num_heads: int | None = None) -> Pretrained:
    """The model with its own preprocessing, class names (or None) and whether its head came along."""
    path = Path(source)
    if path.exists():
        if path.is_dir():
            if (path / "best" / "config.json").is_file():
                path = path / "best"
            if not (path / "config.json").is_file():
                raise VitkitError(
                    f"--pretrained {path}: a folder needs config.json (a vitkit checkpoint, a timm "
                    "hub folder or a Hugging Face save_pretrained folder)"
                )
            return _from_folder(path, num_heads)
        state = load_state_dict_file(path)
        if is_timm_state(state):
            return load_timm_state(state, num_heads or heads_from_name(path.name))
        if any(k.startswith(("vit.", "embeddings.")) for k in state):
            raise VitkitError(f"{path} holds Hugging Face ViT weights: pass the folder with its config.json")
        raise VitkitError(
            f"{path} is not a ViT checkpoint vitkit knows (no patch_embed / blocks keys; first keys: "
            f"{', '.join(list(state)[:5])})"
        )
    if is_hub_id(source):
        return _from_folder(_hub_download(str(source)), num_heads, str(source))
    raise MissingFile(f"--pretrained {source}: no such file or folder, and not a hub id (owner/name)")


def load_classifier_folder(folder: Path) -> tuple[nn.Module, dict]:
    """A classifier saved in a layout vitkit reads, for `vitkit.load`: a vitkit checkpoint, or a Hugging
    Face or timm ViT with its head (as `vitkit export --format hf` and `vitkit push` write them). Returns
    the model and its metadata as a vitkit config.json holds it."""
    from ..models.io import CONFIG_NAME, load_model

    config = read_json(folder / CONFIG_NAME) if (folder / CONFIG_NAME).is_file() else {}
    if "family" in config or not ("model_type" in config or "architecture" in config):
        return load_model(folder)  # a vitkit checkpoint, or what load_model's errors explain
    loaded = _from_folder(folder, None)
    if not loaded.has_head:
        raise VitkitError(
            f"{folder} holds a backbone without a classification head: fine-tune it first, e.g. "
            f"vitkit train --data photos/ --pretrained {folder}"
        )
    model_config = loaded.model.config
    meta = {
        "family": loaded.model.family,
        "config": model_config.to_dict(),
        "class_names": loaded.class_names or [str(i) for i in range(model_config.num_classes)],
        "preprocessing": loaded.preprocessing.to_dict(),
    }
    if config.get("vitkit_ood"):  # unknown-input thresholds a vitkit export kept (`vitkit.eval.trust`)
        meta["ood"] = config["vitkit_ood"]
    if config.get("problem_type") == MULTI_LABEL_PROBLEM:
        meta.update(
            multi_label=True, thresholds=config.get("thresholds") or [UNTUNED_THRESHOLD] * model_config.num_classes
        )
    return loaded.model, meta


def download_checkpoint(repo_id: str) -> Path:
    """The hub repo's config, preprocessing and weights in the huggingface_hub cache, for `vitkit.load`."""
    return _hub_download(repo_id, f"checkpoint {repo_id} (not a local file or folder, so looked up on the hub)")


__all__ = [
    "UNTUNED_THRESHOLD",
    "Pretrained",
    "download_checkpoint",
    "is_hub_id",
    "load_classifier_folder",
    "load_pretrained",
    "network_errors",
    "hf_to_vitkit",
    "vit_config_from_hf",
]
