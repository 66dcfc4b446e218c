"""Typed options declared once: a dataclass field carries its type, default, group, help text and
allowed values, and the command line, `--help`, validation and YAML config files are derived from it."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml


def option(default: Any = None, help: str = "", *, group: str, choices: tuple | None = None, factory=None):
    """A dataclass field with its documentation. `choices` are checked by `check_choices`."""
    metadata = {"help": help, "group": group, "choices": choices}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_choices(config) -> None:
    """Every field with `choices` holds one of them; the error names the flag and the allowed values."""
    for f in dataclasses.fields(config):
        allowed = f.metadata.get("choices")
        if allowed and getattr(config, f.name) not in allowed:
            raise ValueError(f"{flag(f.name)} {getattr(config, f.name)!r}: use one of {', '.join(map(str, allowed))}")


def _base_type(kind):
    args = typing.get_args(kind)
    if args and type(None) in args:
        return next(a for a in args if a is not type(None))
    return kind


def _parse_key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. depth=6")
    key, value = text.split("=", 1)
    return key.strip().replace("-", "_"), yaml.safe_load(value)


def add_dataclass_options(
    parser: argparse.ArgumentParser, cls, group_titles: dict[str, str], exclude: tuple[str, ...] = ()
) -> None:
    """One flag per field (but those in `exclude`), in argument groups, each defaulting to 'not given'
    (argparse.SUPPRESS) so that the caller's own precedence rules fill the rest. The help shows the
    declared default."""
    hints = typing.get_type_hints(cls)
    groups = {name: parser.add_argument_group(name, title) for name, title in group_titles.items()}
    order = list(group_titles)
    fields = [f for f in dataclasses.fields(cls) if f.name not in exclude]
    for f in sorted(fields, key=lambda f: order.index(f.metadata["group"])):
        group = groups[f.metadata["group"]]
        kind = _base_type(hints[f.name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        help_text = f.metadata["help"]
        if default not in (None, "", (), {}, 0, False):
            help_text += f" (default: {default})"
        common = dict(default=argparse.SUPPRESS, help=help_text)
        if typing.get_origin(kind) is dict:
            name = f.name.removesuffix("s")
            group.add_argument(
                flag(name), dest=f.name, action="append", type=_parse_key_value, metavar="KEY=VALUE", **common
            )
        elif kind is bool:
            group.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **common)
        elif typing.get_origin(kind) is tuple:
            group.add_argument(flag(f.name), type=float, nargs="+", metavar="X", **common)
        elif f.metadata.get("choices"):
            group.add_argument(flag(f.name), type=kind, choices=f.metadata["choices"], **common)
        else:
            group.add_argument(flag(f.name), type=kind, metavar=f.name.split("_")[-1].upper(), **common)


def read_yaml_options(path: str | Path, cls) -> dict[str, Any]:
    """Options from a YAML file (e.g. a run's args.yaml): a mapping of field names (dashes allowed)."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path}: no such file") from None
    except yaml.YAMLError as e:
        raise ValueError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of option: value, got {type(values).__name__}")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"--config {path}: unknown option(s) {', '.join(unknown)}")
    return values
