"""Model registry: every named architecture maps to a family class and a typed config."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..errors import VitkitError
from ..options import typed_values


@dataclass
class ModelConfig:
    """Fields every family shares. Families subclass this with their own architecture fields."""

    num_classes: int = 1000
    image_size: int = 224
    in_chans: int = 3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FAMILIES: dict[str, type[nn.Module]] = {}
_MODELS: dict[str, tuple[str, ModelConfig]] = {}


def register_family(name: str):
    """Class decorator: the family name is stored in checkpoints, so it must never change."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        cls.family = name
        FAMILIES[name] = cls
        return cls

    return wrap


def register_model(name: str, family: str, config: ModelConfig) -> None:
    if name in _MODELS:
        raise ValueError(f"model {name!r} registered twice")
    _MODELS[name] = (family, config)


def registered_models() -> list[str]:
    return sorted(_MODELS)


def unknown_name_error(kind: str, name: str, known: list[str]) -> VitkitError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return VitkitError(f"unknown {kind} {name!r}.{hint} Available: {', '.join(known)}")


def build_config(family: str, base: ModelConfig | None, overrides: dict[str, Any]) -> ModelConfig:
    """Apply overrides to a registered config, rejecting unknown fields by name."""
    cls = FAMILIES[family].config_class
    base = base or cls()
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise VitkitError(f"{family} models have no option(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    return dataclasses.replace(base, **typed_values(overrides, cls, lambda name: f"model option {name}"))


def lookup_model(name: str) -> tuple[str, ModelConfig]:
    if name not in _MODELS:
        raise unknown_name_error("model", name, registered_models())
    return _MODELS[name]


def model_from_config(family: str, config: dict[str, Any] | ModelConfig) -> nn.Module:
    if family not in FAMILIES:
        raise unknown_name_error("model family", family, sorted(FAMILIES))
    if isinstance(config, dict):
        config = build_config(family, None, config)
    return FAMILIES[family](config)
