"""Typed options declared once: a dataclass field carries its type, default, group, help text and
allowed values, and the command line, `--help`, validation and YAML config files are derived from it."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import MissingFile, VitkitError

# A configuration is a few dozen options: these caps refuse what no configuration needs (an alias bomb
# that expands to gigabytes, a megabyte of keys) before it costs memory or time.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 10_000


COMMANDS = ("train", "lr-find")  # the commands that take training options as flags


def option(
    default: Any = None,
    help: str = "",
    *,
    group: str,
    choices: tuple | None = None,
    factory=None,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
    resumable: bool = False,
    commands: tuple[str, ...] = COMMANDS,
    flag: str | None = None,
    unit: float = 1,
    path: bool = False,
    card: int | None = None,
    other_data: bool = False,
):
    """A dataclass field with its documentation and rules: `choices`, bounds (`at_least`/`above` below,
    `at_most`/`below` above; None values are not checked), whether `--resume` may change it (`resumable`:
    how the run executes, never what it computes), the `commands` that take it as a flag (none: a value
    vitkit records, e.g. a choice it made), whether it may hold a local file or folder (`path`) and its row
    in a model card's training table (`card`: 1 first; None: not shown) and whether a checkpoint evaluated on
    other data than its run's keeps the run's value (`other_data`: how images are read, not which).
    `check_options` enforces choices and bounds. A `flag` named otherwise than the field takes the value in
    `unit`s (e.g. --max-upload-mb for a byte count, unit MiB). `default=dataclasses.MISSING`: a value the
    caller must give (a required flag)."""
    metadata = {
        "help": help,
        "group": group,
        "choices": choices,
        "bounds": (at_least, above, at_most, below),
        "resumable": resumable,
        "commands": commands,
        "flag": flag,
        "unit": unit,
        "path": path,
        "card": card,
        "other_data": other_data,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _range_text(at_least, above, at_most, below) -> str:
    """What the bounds ask, in words: "must be at least 1", "must not be negative", "must be in [0, 1)"."""
    if at_most is None and below is None:
        if above is not None:
            return "must be positive" if above == 0 else f"must be above {above:g}"
        return "must not be negative" if at_least == 0 else f"must be at least {at_least:g}"
    if at_least is None and above is None:
        return f"must be at most {at_most:g}" if below is None else f"must be below {below:g}"
    low = f"[{at_least:g}" if above is None else f"({above:g}"
    high = f"{at_most:g}]" if below is None else f"{below:g})"
    return f"must be in {low}, {high}"


def _outside(value, at_least, above, at_most, below) -> bool:
    return (
        (at_least is not None and value < at_least)
        or (above is not None and value <= above)
        or (at_most is not None and value > at_most)
        or (below is not None and value >= below)
    )


def check_options(config) -> None:
    """Every field holds one of its `choices` and lies within its bounds; the error names the flag and
    what it allows."""
    for f in dataclasses.fields(config):
        value, allowed = getattr(config, f.name), f.metadata.get("choices")
        if allowed and value not in allowed:
            raise VitkitError(f"{flag(f.name)} {value!r}: use one of {', '.join(map(str, allowed))}")
        at_least, above, at_most, below = f.metadata.get("bounds", (None,) * 4)
        if value is None or (at_least, above, at_most, below) == (None,) * 4:
            continue
        if _outside(value, at_least, above, at_most, below):
            raise VitkitError(f"{flag(f.name)} {_range_text(at_least, above, at_most, below)}, got {value}")


def names_where(cls, **metadata: Any) -> tuple[str, ...]:
    """The fields of dataclass `cls` whose metadata has these values (e.g. resumable=True)."""
    return tuple(f.name for f in dataclasses.fields(cls) if all(f.metadata.get(k) == v for k, v in metadata.items()))


def ranked(cls, key: str) -> tuple[str, ...]:
    """The fields of dataclass `cls` that rank a place in `key` (e.g. card=3), in that order."""
    ranks = {f.name: f.metadata[key] for f in dataclasses.fields(cls) if f.metadata.get(key) is not None}
    return tuple(sorted(ranks, key=ranks.get))


def for_command(cls, command: str) -> tuple[str, ...]:
    """The fields of `cls` that `command` takes as flags."""
    return tuple(f.name for f in dataclasses.fields(cls) if command in f.metadata.get("commands", COMMANDS))


def part_of(cls, options):
    """The `cls` (a dataclass whose fields `options` also has, e.g. a base class of it) that `options` holds."""
    return cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(cls)})


def check_known(values: dict[str, Any], cls, source: str) -> None:
    """Refuse names that are no field of `cls`, naming where they came from and a few valid ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise VitkitError(f"{source}: unknown option(s) {name_list(unknown)}; valid: {name_list(sorted(known), 12)}")


def _base_type(kind):
    args = typing.get_args(kind)
    if args and type(None) in args:
        return next(a for a in args if a is not type(None))
    return kind


class YAMLRefused(VitkitError):
    """Well-formed YAML that a configuration file may not use."""


class _PlainLoader(yaml.SafeLoader):
    """yaml.SafeLoader without anchors and aliases (which let a few lines expand to gigabytes), counting
    the nodes it composes."""

    nodes = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise YAMLRefused(
                f"line {event.start_mark.line + 1} uses an anchor or alias (& or *), which configuration files "
                "may not: write the values out"
            )
        self.nodes += 1
        if self.nodes > MAX_YAML_NODES:
            raise YAMLRefused(f"more than {MAX_YAML_NODES:,} values, far more than any configuration holds")
        return super().compose_node(parent, index)


def _check_size(size: int, source: str) -> None:
    if size > MAX_YAML_BYTES:
        raise VitkitError(f"{source}: {size:,} bytes, over the {MAX_YAML_BYTES:,} a configuration may take")


def parse_yaml(text: str, source: str) -> Any:
    """A YAML document through the plain loader; every refusal is a ValueError naming `source`."""
    _check_size(len(text.encode()), source)
    loader = _PlainLoader(text)
    try:
        return loader.get_single_data()
    except YAMLRefused as e:
        raise VitkitError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        raise VitkitError(f"{source}: not valid YAML ({str(e).splitlines()[0]})") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path, source: str) -> Any:
    """The YAML file at `path` (checked for size before it is read) through `parse_yaml`."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise MissingFile(f"{source}: no such file") from None
    _check_size(size, source)
    return parse_yaml(path.read_text(), source)


def _describe(value: Any) -> str:
    """A value as the YAML a user wrote would spell it, cut short."""
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# A declared scalar type: what it accepts (a bool is no number, a number no bool) and what the error asks for.
_SCALARS = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: _number(v) and isinstance(v, int), "a whole number"),
    float: (lambda v: _number(v) and math.isfinite(v), "a finite number"),
    str: (lambda v: isinstance(v, str), "text"),
}


def typed_value(kind, value: Any, name: str) -> Any:
    """`value` as the declared type `kind`, or a ValueError naming the option. Only lossless conversions:
    a whole float (2.0) to int, an int to float, a list to a tuple; never a bool to a number, a
    fraction to int, a number to a bool, or a missing value where a number is needed."""
    args = typing.get_args(kind)
    if type(None) in args:
        return None if value is None else typed_value(_base_type(kind), value, name)
    if dataclasses.is_dataclass(kind):  # a record vitkit writes into a configuration (budget_size)
        return value if isinstance(value, kind) else kind.from_dict(value, name)
    origin = typing.get_origin(kind)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise VitkitError(f"{name}: expected a list of values, got {_describe(value)}")
        return tuple(typed_value(args[0], v, name) for v in value)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise VitkitError(f"{name}: expected a mapping of name: value, got {_describe(value)}")
        return dict(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is str and isinstance(value, os.PathLike):  # a path given through the Python API
        return os.fspath(value)
    if kind in _SCALARS:
        accepts, wanted = _SCALARS[kind]
        if not accepts(value):
            raise VitkitError(f"{name}: expected {wanted}, got {_describe(value)}")
        return float(value) if kind is float else value
    return value


def typed_values(values: dict[str, Any], cls, describe=flag) -> dict[str, Any]:
    """Every value in `values` as its field of dataclass `cls` declares it (see `typed_value`); the
    error names the field as `describe` spells it."""
    hints = typing.get_type_hints(cls)
    return {k: typed_value(hints[k], v, describe(k)) if k in hints else v for k, v in values.items()}


def name_list(names: list[str], shown: int = 8) -> str:
    """At most `shown` names, then how many more: an error line stays a line."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(_describe(n) if len(n) > 40 else n for n in names[:shown]) + more


def _parse_key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. depth=6")
    key, value = text.split("=", 1)
    try:
        return key.strip().replace("-", "_"), parse_yaml(value, key.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _refusal(text: str, value, whole: bool, bounds: tuple) -> str | None:
    """Why a flag's value is refused, in the words argparse puts after the flag's name; None: accepted."""
    at_least, _, at_most, _ = bounds
    if whole and at_least is not None and value < at_least:
        return f"{value} is below the minimum of {at_least}"
    if whole and at_most is not None and value > at_most:
        return f"{value} is above the maximum of {at_most}"
    if math.isfinite(value) and not _outside(value, *bounds):
        return None
    return f"{text} must be a positive number" if bounds == (None, 0, None, None) else f"{text} {_range_text(*bounds)}"


def _bounded(kind, bounds: tuple):
    """An argparse type for numbers of `kind` within `bounds`: a value outside is a usage error naming the flag."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        refusal = _refusal(text, value, kind is int, bounds)
        if refusal:
            raise argparse.ArgumentTypeError(refusal)
        return value

    parse.__name__ = kind.__name__
    return parse


def add_dataclass_options(
    parser: argparse.ArgumentParser,
    cls,
    group_titles: dict[str, str | None],
    command: str | None = None,
    defaults: dict[str, Any] | None = None,
    bounds_in_parser: bool = False,
) -> None:
    """One flag per field (per field that `command` takes, when given), in argument groups (a group titled
    None: the parser's own options). Without `defaults` each flag defaults to 'not given'
    (argparse.SUPPRESS), so that the caller's own precedence rules fill the rest; with them, to the
    declared default or the one `defaults` gives for this command, and a switch off by default is a plain
    --flag. The help shows the default. `bounds_in_parser`: the parser refuses a value out of bounds, for
    options that no configuration file or later check completes."""
    hints = typing.get_type_hints(cls)
    groups = {name: parser.add_argument_group(name, title) if title else parser for name, title in group_titles.items()}
    order = list(group_titles)
    names = for_command(cls, command) if command else [f.name for f in dataclasses.fields(cls)]
    fields = [f for f in dataclasses.fields(cls) if f.name in names]
    for f in sorted(fields, key=lambda f: order.index(f.metadata["group"])):
        group = groups[f.metadata["group"]]
        kind, unit, name = _base_type(hints[f.name]), f.metadata.get("unit", 1), flag(f.metadata.get("flag") or f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        default = (defaults or {}).get(f.name, default)
        if unit != 1:  # the flag's value is in units, a fraction of one allowed
            kind, default = float, default / unit
        help_text = f.metadata["help"]
        if default not in (None, "", (), {}, 0, False, dataclasses.MISSING):
            help_text += f" (default: {default:g})" if unit != 1 else f" (default: {default})"
        common = dict(default=argparse.SUPPRESS if defaults is None else default, help=help_text.replace("%", "%%"))
        if default is dataclasses.MISSING:
            common.update(default=None, required=True)
        if typing.get_origin(kind) is dict:
            name = f.name.removesuffix("s")
            group.add_argument(
                flag(name), dest=f.name, action="append", type=_parse_key_value, metavar="KEY=VALUE", **common
            )
        elif kind is bool:
            switch = defaults is not None and default is False
            group.add_argument(name, action="store_true" if switch else argparse.BooleanOptionalAction, **common)
        elif typing.get_origin(kind) is tuple:
            group.add_argument(name, type=float, nargs="+", metavar="X", **common)
        elif f.metadata.get("choices"):
            group.add_argument(name, type=kind, choices=f.metadata["choices"], **common)
        else:
            bounds = f.metadata.get("bounds", (None,) * 4)
            if bounds_in_parser and bounds != (None,) * 4:
                kind = _bounded(kind, bounds)
            group.add_argument(name, type=kind, metavar=name.split("-")[-1].upper(), **common)


def read_yaml_options(path: str | Path, cls, source: str | None = None) -> dict[str, Any]:
    """Options from a YAML file (e.g. a run's args.yaml): a mapping of field names (dashes allowed). Errors
    name `source` (default: --config PATH)."""
    source = source or f"--config {path}"
    values = read_yaml(path, source)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise VitkitError(f"{source}: expected a mapping of option: value, got {type(values).__name__}")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    check_known(values, cls, source)
    try:
        return typed_values(values, cls, lambda name: name)
    except VitkitError as e:
        raise VitkitError(f"{source}: {e}") from None
