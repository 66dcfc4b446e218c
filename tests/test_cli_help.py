"""Every flag of every `vitkit` command says what it does in --help."""

import argparse

from vitkit.cli import build_parser


def commands(parser: argparse.ArgumentParser, prefix: str = "vitkit"):
    """(command, parser) for every command and sub-command, walked through the sub-parser actions."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, f"{prefix} {name}")


def test_every_flag_of_every_command_has_help_text():
    missing = [
        f"{command} {action.option_strings[-1]}"
        for command, parser in commands(build_parser())
        for action in parser._actions
        if action.option_strings and not (action.help and action.help.strip())
    ]
    assert len(list(commands(build_parser()))) > 10
    assert missing == []
