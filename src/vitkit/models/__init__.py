"""Model zoo: `create_model(name_or_preset, ...)` and `list_models()`.

Families (one file each): ViT (`vit.py`), MLP-Mixer (`mixer.py`), FNet (`fnet.py`), gMLP (`gmlp.py`),
ResNet (`resnet.py`), the airbench-style CNN (`fastnet.py`); shared layers live in `layers.py` and `patch_mlp.py`.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from . import fastnet, fnet, gmlp, mixer, resnet, vit  # noqa: F401  (registers the families)
from .io import load_model, save_model
from .presets import PRESET_ALIASES, PRESETS, Preset
from .registry import FAMILIES, build_config, lookup_model, registered_models, unknown_name_error


def list_models(kind: str = "all") -> list[str]:
    """Registered model names and preset names (`kind`: all, models or presets)."""
    models, presets = registered_models(), sorted(PRESETS)
    return {"all": models + presets, "models": models, "presets": presets}[kind]


def get_preset(name: str) -> Preset:
    """A preset by name, or by an earlier name of it (PRESET_ALIASES)."""
    name = PRESET_ALIASES.get(name, name)
    if name not in PRESETS:
        raise unknown_name_error("preset", name, sorted(PRESETS))
    return PRESETS[name]


def resolve_model_config(
    name: str,
    num_classes: int | None = None,
    image_size: int | None = None,
    in_chans: int | None = None,
    **overrides: Any,
):
    """(family, config) for a model or preset name with the given changes applied."""
    if name in PRESETS or name in PRESET_ALIASES:
        preset = get_preset(name)
        family, base = lookup_model(preset.model)
        overrides = {**preset.model_args, **overrides}
    elif name in registered_models():
        family, base = lookup_model(name)
    else:
        raise unknown_name_error("model", name, list_models())
    for key, value in (("num_classes", num_classes), ("image_size", image_size), ("in_chans", in_chans)):
        if value is not None:
            overrides[key] = value
    return family, build_config(family, base, overrides)


def create_model(
    name: str,
    num_classes: int | None = None,
    image_size: int | None = None,
    in_chans: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a model by registered name or preset name. Every model takes NCHW float images and
    returns logits (B, num_classes)."""
    family, config = resolve_model_config(name, num_classes, image_size, in_chans, **overrides)
    return FAMILIES[family](config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "create_model",
    "list_models",
    "get_preset",
    "resolve_model_config",
    "save_model",
    "load_model",
    "count_parameters",
    "PRESETS",
    "FAMILIES",
]
