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
    given = dict(num_classes=num_classes, image_size=image_size, in_chans=in_chans)
    overrides = {**overrides, **{key: value for key, value in given.items() if value is not None}}
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


def models_table(kind: str = "all") -> str:
    """The models and presets of `list_models(kind)` as `vitkit models` prints them: name, family, parameters,
    input size and description, and under a preset the larger sizes a --time-budget may train."""
    import torch

    names = list_models(kind)
    width = max(map(len, names))
    lines = [f"{'name':<{width}}  {'family':<7} {'params':>9}  {'size':>5}  description"]
    for name in names:
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = create_model(name)
        family = "preset" if name in PRESETS else model.family
        description = PRESETS[name].description if name in PRESETS else ""
        lines.append(
            f"{name:<{width}}  {family:<7} {count_parameters(model) / 1e6:8.2f}M  "
            f"{model.config.image_size:>3}px  {description}".rstrip()
        )
        for epochs, changes in PRESETS[name].budget_sizes if name in PRESETS else ():
            with torch.device("meta"):
                sized = create_model(PRESETS[name].model, **{**PRESETS[name].model_args, **changes})
            what = ", ".join(f"{key}={value}" for key, value in changes.items())
            lines.append(
                f"{'':<{width}}  {'':<7} {count_parameters(sized) / 1e6:8.2f}M         "
                f"with a --time-budget that trains it {epochs:g}+ epochs here: {what}"
            )
    return "\n".join(lines)


__all__ = [
    "create_model",
    "list_models",
    "get_preset",
    "resolve_model_config",
    "save_model",
    "load_model",
    "count_parameters",
    "models_table",
    "PRESETS",
    "FAMILIES",
]
