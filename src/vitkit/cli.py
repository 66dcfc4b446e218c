"""`vitkit` command line: a thin layer over the Python API."""
from __future__ import annotations

import argparse
import sys

from . import __version__


class UserError(Exception):
    """A mistake in the command's input: printed as one line, exit status 2."""


def cmd_models(args: argparse.Namespace) -> int:
    from .models import PRESETS, count_parameters, create_model, list_models

    names = list_models("presets" if args.presets else "all")
    width = max(map(len, names))
    for name in names:
        model = create_model(name)
        kind = "preset" if name in PRESETS else model.family
        desc = PRESETS[name].description if name in PRESETS else ""
        cfg = model.config
        print(f"{name:<{width}}  {kind:<7} {count_parameters(model) / 1e6:8.2f}M  "
              f"{cfg.image_size:>3}px  {desc}".rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitkit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vitkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list models and presets")
    p.add_argument("--presets", action="store_true", help="presets only")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ValueError, FileNotFoundError) as e:
        print(f"vitkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitkit {args.command}: interrupted", file=sys.stderr)
        return 130
