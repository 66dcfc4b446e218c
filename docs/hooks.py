"""MkDocs hooks: the pages generated at build time, so they cannot drift from what they describe.

- reference/options.md: every command and flag of `vitkit`, read from the parsers that `--help` prints
  (src/vitkit/cli.py, and the TrainConfig declarations in src/vitkit/training/config.py);
- benchmarks.md: `benchmarks/report.py`'s page from benchmarks/results/*.json, with the curves it links;
- the model and preset tables, from the registry and the presets, wherever a page (or README.md) has
  `<!-- vitkit:models -->` or `<!-- vitkit:presets -->`; the presets' sources and rationale where a page
  has `<!-- vitkit:recipe-notes -->`.

`python docs/hooks.py` rewrites README.md's copies of those tables (between `<!-- vitkit:NAME:start -->`
and `<!-- vitkit:NAME:end -->`); a test checks that they are current.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTIONS_PAGE = "reference/options.md"
BENCHMARKS_PAGE = "benchmarks.md"


def _on_path(folder: str) -> None:
    """Import from this tree (its vitkit, installed or not; its benchmarks). At call time: MkDocs restores
    sys.path after loading a hook."""
    if str(ROOT / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / folder))


FLAG = re.compile(r"(?<![\w`-])(--[a-z][a-z0-9-]*)")
STATED_DEFAULT = re.compile(r"\s*\(default: ((?:[^()]|\([^()]*\))*)\)$")


def _markdown(text: str) -> str:
    """Help text as a Markdown table cell: code spans kept, flags made code, characters Markdown would
    act on escaped."""
    parts = re.split(r"(`[^`]*`)", " ".join(text.split()))
    escaped = [
        part
        if part.startswith("`")
        else FLAG.sub(r"`\1`", part.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;"))
        for part in parts
    ]
    return "".join(escaped)


def _value(action: argparse.Action) -> str:
    """What a flag takes: its choices, its metavar, or nothing for a switch or a positional argument."""
    if action.nargs == 0 or not action.option_strings:
        return ""
    if action.choices:
        return " \\| ".join(f"`{c}`" for c in action.choices)
    metavar = action.metavar or action.dest.upper()
    return f"`{metavar}`" + (" ..." if action.nargs in ("+", "*") else "")


def _split_default(action: argparse.Action, help_text: str) -> tuple[str, str]:
    """(help without its closing "(default: ...)", the default): the one the help states, else the parser's."""
    stated = STATED_DEFAULT.search(help_text)
    if stated:
        value = stated.group(1)
        return help_text[: stated.start()], f"`{value}`" if " " not in value else _markdown(value)
    if action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
        return help_text, ""
    value = f"{action.default:g}" if isinstance(action.default, float) else str(action.default)
    return help_text, f"`{value}`"


def _synopsis(name: str, parser: argparse.ArgumentParser) -> str:
    """`vitkit NAME`, its required flags and positional arguments, and [options] when it has others."""
    words = [f"vitkit {name}"]
    optional = False
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:
            words.append(action.dest.upper() + (" ..." if action.nargs in ("+", "*") else ""))
        elif action.required:
            words.insert(1, f"{action.option_strings[0]} {action.metavar or action.dest.upper()}")
        else:
            optional = True
    return " ".join(words[:1] + (["[options]"] if optional else []) + words[1:])


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text exactly as `--help` expands it (%(default)s and friends)."""
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    return parser._get_formatter()._expand_help(action)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def _command_section(name: str, parser: argparse.ArgumentParser, summary: str) -> list[str]:
    out = [f"## `vitkit {name}`", ""]
    if summary:
        out += [_markdown(summary[0].upper() + summary[1:]) + ".", ""]
    if parser.description:
        out += [_markdown(parser.description), ""]
    out += ["```text", _synopsis(name, parser), "```", ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = f"{group.title}: {group.description}" if group.description else group.title
        out += [f"**{_markdown(title[0].upper() + title[1:])}**", ""]
        out += ["| flag | value | default | description |", "|---|---|---|---|"]
        for action in actions:
            names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest.upper()}`"
            text, default = _split_default(action, _help(parser, action))
            out.append(f"| {names} | {_value(action)} | {default} | {_markdown(text)} |")
        out.append("")
    return out


def options_reference() -> str:
    """The options page: every `vitkit` command with its arguments and flags, from the real parsers."""
    _on_path("src")
    from vitkit.cli import build_parser

    parser = build_parser()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)][0]
    summaries = {choice.dest: choice.help or "" for choice in subparsers._choices_actions}
    out = [
        "# Command-line options",
        "",
        "Generated from vitkit's own parsers when this site is built, so it lists exactly what "
        "`vitkit COMMAND --help` prints. `vitkit train` and `vitkit lr-find` take the training options, "
        "each declared once with its type, default and help (`vitkit.training.config.TrainConfig`); "
        "the same names, with underscores, are the keys of `--config FILE.yaml` and of `vitkit.train(...)`.",
        "",
    ]
    for name, sub in _subcommands(parser).items():
        nested = _subcommands(sub)
        if nested:
            nested_actions = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)][0]
            nested_help = {choice.dest: choice.help or "" for choice in nested_actions._choices_actions}
            for inner, inner_parser in nested.items():
                out += _command_section(f"{name} {inner}", inner_parser, nested_help.get(inner, ""))
        else:
            out += _command_section(name, sub, summaries.get(name, ""))
    return "\n".join(out).rstrip("\n") + "\n"


@functools.cache
def _models() -> list[tuple[str, bool, str, float, int]]:
    """(name, is a preset, family, parameters in millions, input size) of every model and preset."""
    _on_path("src")
    import torch

    from vitkit.models import PRESETS, count_parameters, create_model, list_models
    from vitkit.models.base import FAMILY_TITLES

    rows = []
    for name in list_models("all"):
        with torch.device("meta"):  # shapes only
            model = create_model(name)
        family = FAMILY_TITLES.get(model.family, model.family)
        rows.append((name, name in PRESETS, family, count_parameters(model) / 1e6, model.config.image_size))
    return rows


def models_table() -> str:
    """One row per family: its registered models with their parameters and input size."""
    by_family: dict[str, list[str]] = {}
    for name, preset, family, params, size in _models():
        if not preset:
            by_family.setdefault(family, []).append(f"`{name}` ({params:.2f}M, {size} px)")
    rows = [f"| {family} | {', '.join(names)} |" for family, names in by_family.items()]
    return "\n".join(["| family | models (parameters, input size) |", "|---|---|", *rows])


def presets_table() -> str:
    """Every preset: its family, size and description, and whether a budget may pick a larger size."""
    _on_path("src")
    from vitkit.models import PRESETS

    rows = []
    for name, preset, family, params, size in _models():
        if not preset:
            continue
        sizes = len(PRESETS[name].budget_sizes)
        grows = f" With `--time-budget`: {sizes} larger sizes, chosen by measured speed." if sizes else ""
        what = _markdown(PRESETS[name].description)
        rows.append(f"| `{name}` | {family} | {params:.2f}M | {size} px | {what}.{grows} |")
    return "\n".join(["| preset | family | parameters | input | what it is |", "|---|---|---|---|---|", *rows])


def recipe_notes() -> str:
    """Per preset, the published recipe it follows (`Preset.source`) and why its values are what they are
    (`Preset.rationale`)."""
    _on_path("src")
    from vitkit.models import PRESETS

    out = []
    for name, preset in PRESETS.items():
        source = preset.source
        if source is None and not preset.rationale:
            continue
        out += [f"**`{name}`**", ""]
        if source is not None:
            out.append(
                f"- Follows [{source.name}]({source.url}) ({_markdown(source.reference)}), which reports "
                f"{source.top1:.2%} ({_markdown(source.result)}) in {source.epochs:g} epochs. What vitkit's "
                "version does differently:"
            )
            out += [f"    - {_markdown(difference)}" for difference in source.differences]
        out += [f"- {_markdown(line)}" for line in preset.rationale]
        out.append("")
    return "\n".join(out).rstrip("\n")


TABLES = {"models": models_table, "presets": presets_table, "recipe-notes": recipe_notes}


def fill_tables(markdown: str) -> str:
    """Each `<!-- vitkit:NAME -->` line replaced by that table."""
    for name, make in TABLES.items():
        marker = f"<!-- vitkit:{name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown


def readme_with_tables(text: str) -> str:
    """README.md's text with its generated tables rewritten."""
    for name, make in TABLES.items():
        start, end = f"<!-- vitkit:{name}:start -->", f"<!-- vitkit:{name}:end -->"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = head + start + "\n" + make() + "\n" + end + rest.split(end, 1)[1]
    return text


def benchmarks_page() -> str:
    _on_path("benchmarks")
    import report

    return report.page()


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, OPTIONS_PAGE, content=options_reference()))
    files.append(File.generated(config, BENCHMARKS_PAGE, content=benchmarks_page()))
    curves = ROOT / "benchmarks" / "results" / "time_to_accuracy"
    for png in sorted(curves.glob("*.png")):
        files.append(File.generated(config, f"curves/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    return fill_tables(markdown)


if __name__ == "__main__":
    readme = ROOT / "README.md"
    readme.write_text(readme_with_tables(readme.read_text()))
    print("README.md: model and preset tables regenerated")
