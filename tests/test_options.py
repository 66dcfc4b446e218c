"""vitkit.options: options declared once (type, default, help, bounds, choices) and what is derived from
them: validation, typed conversion of YAML and Python values, the YAML refusals, the command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from vitkit import options
from vitkit.errors import MissingFile, VitkitError
from vitkit.options import (
    add_dataclass_options,
    check_options,
    for_command,
    names_where,
    option,
    parse_yaml,
    read_yaml,
    read_yaml_options,
    typed_value,
)


@dataclasses.dataclass
class Sample:
    depth: int = option(6, "blocks", group="model", at_least=1)
    rate: float = option(1e-3, "learning rate", group="optim", above=0)
    share: float = option(0.1, "a fraction", group="optim", at_least=0, below=1)
    smoothing: float = option(0.0, "at most one", group="optim", at_least=0, at_most=1)
    drop: float | None = option(None, "optional, not negative", group="optim", at_least=0)
    mode: str = option("cosine", "schedule", group="optim", choices=("cosine", "linear"))
    flips: bool = option(False, "mirror images", group="model")
    mean: tuple[float, ...] | None = option(None, "per channel", group="model")
    model_args: dict[str, Any] = option(help="architecture arguments", group="model", factory=dict)
    speed: bool = option(False, "how it runs", group="optim", resumable=True, commands=("train",))
    recorded: str | None = option(None, "a choice vitkit made", group="model", commands=())


GROUPS = {"model": "the model", "optim": "optimisation"}


# ----------------------------------------------------------------------------- declarations


def test_option_keeps_its_documentation_and_rules_in_the_field_metadata():
    fields = {f.name: f for f in dataclasses.fields(Sample)}
    share = fields["share"].metadata
    assert share["help"] == "a fraction" and share["group"] == "optim"
    assert share["bounds"] == (0, None, None, 1) and share["choices"] is None
    assert fields["mode"].metadata["choices"] == ("cosine", "linear")
    assert fields["depth"].default == 6
    # a factory gives each instance its own value
    assert fields["model_args"].default_factory is dict and Sample().model_args is not Sample().model_args
    assert names_where(Sample, resumable=True) == ("speed",)
    assert "speed" in for_command(Sample, "train") and "speed" not in for_command(Sample, "lr-find")
    assert "recorded" not in for_command(Sample, "train")  # no command takes it as a flag
    assert "depth" in for_command(Sample, "lr-find")  # by default both training commands take it


# ----------------------------------------------------------------------------- check_options


def test_check_options_accepts_the_defaults_and_the_edges_of_each_range():
    check_options(Sample())
    check_options(Sample(depth=1, share=0.0, smoothing=1.0, drop=0.0, rate=1e-12, mode="linear"))


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(depth=0), "--depth must be at least 1, got 0"),
        (dict(rate=0.0), "--rate must be positive, got 0.0"),
        (dict(rate=-1.0), "--rate must be positive"),
        (dict(share=1.0), r"--share must be in \[0, 1\), got 1.0"),
        (dict(share=-0.1), r"--share must be in \[0, 1\)"),
        (dict(smoothing=1.5), r"--smoothing must be in \[0, 1\], got 1.5"),
        (dict(drop=-0.5), "--drop must not be negative, got -0.5"),
        (dict(mode="cosin"), "--mode 'cosin': use one of cosine, linear"),
    ],
)
def test_check_options_names_the_flag_and_what_it_allows(values, message):
    with pytest.raises(VitkitError, match=message):
        check_options(Sample(**values))


def test_range_words_for_one_sided_and_open_bounds():
    words = options._range_text
    assert words(None, 2, None, None) == "must be above 2"
    assert words(3, None, None, None) == "must be at least 3"
    assert words(None, None, 5, None) == "must be at most 5"
    assert words(None, None, None, 5) == "must be below 5"
    assert words(None, 0, None, 1) == "must be in (0, 1)"


# ----------------------------------------------------------------------------- typed_value


def test_typed_value_makes_only_lossless_conversions():
    assert typed_value(int, 2.0, "--depth") == 2 and type(typed_value(int, 2.0, "--depth")) is int
    assert typed_value(float, 3, "--rate") == 3.0 and type(typed_value(float, 3, "--rate")) is float
    assert typed_value(tuple[float, ...], [1, 2.5], "--mean") == (1.0, 2.5)
    assert typed_value(float | None, None, "--drop") is None
    assert typed_value(float | None, 1, "--drop") == 1.0
    assert typed_value(str, Path("a/b"), "--data") == "a/b"  # a path given through the Python API
    assert typed_value(dict[str, int], {"depth": 2}, "--model-arg") == {"depth": 2}
    assert typed_value(bool, True, "--flips") is True


@pytest.mark.parametrize(
    "kind, value, message",
    [
        (int, 2.5, "--x: expected a whole number, got 2.5"),
        (int, True, "--x: expected a whole number, got true"),
        (float, True, "--x: expected a finite number, got true"),
        (float, float("nan"), "--x: expected a finite number, got nan"),
        (float, float("inf"), "--x: expected a finite number, got inf"),
        (float, None, "--x: expected a finite number, got null"),
        (float, "0.1", "--x: expected a finite number, got '0.1'"),
        (bool, 1, "--x: expected true or false, got 1"),
        (str, 5, "--x: expected text, got 5"),
        (tuple[float, ...], 0.5, "--x: expected a list of values, got 0.5"),
        (tuple[float, ...], [0.5, "a"], "--x: expected a finite number, got 'a'"),
        (dict[str, Any], [1, 2], r"--x: expected a mapping of name: value, got \[1, 2\]"),
        (dict[str, Any], {1: 2}, "--x: expected a mapping of name: value"),
    ],
)
def test_typed_value_refuses_what_would_change_the_value(kind, value, message):
    with pytest.raises(VitkitError, match=message):
        typed_value(kind, value, "--x")


def test_a_long_refused_value_is_cut_short_in_the_message():
    with pytest.raises(VitkitError) as refused:
        typed_value(int, "x" * 500, "--depth")
    assert len(str(refused.value)) < 100 and str(refused.value).endswith("...")


# ----------------------------------------------------------------------------- YAML


def test_plain_yaml_parses():
    assert parse_yaml("depth: 4\nmean: [0.5, 0.5]\n", "cfg.yaml") == {"depth": 4, "mean": [0.5, 0.5]}


@pytest.mark.parametrize(
    "text",
    [
        "base: &b {depth: 4}\nother: *b\n",  # anchor and alias
        "depth: &d 4\n",  # an anchor alone
        "a: [1, 2]\nb: *missing\n",  # an alias, even one that points nowhere
    ],
)
def test_yaml_anchors_and_aliases_are_refused_with_their_line(text):
    with pytest.raises(VitkitError, match=r"cfg.yaml: line \d+ uses an anchor or alias"):
        parse_yaml(text, "cfg.yaml")


def test_a_billion_laughs_document_is_refused_before_it_expands():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, n in zip("abcdefgh", "bcdefghi")
    )
    with pytest.raises(VitkitError, match="line 1 uses an anchor or alias"):
        parse_yaml(bomb, "cfg.yaml")


def test_yaml_with_too_many_nodes_is_refused():
    at_cap = "[" + ", ".join(["1"] * (options.MAX_YAML_NODES - 1)) + "]"  # the list is a node too
    assert len(parse_yaml(at_cap, "cfg.yaml")) == options.MAX_YAML_NODES - 1
    over = "[" + ", ".join(["1"] * options.MAX_YAML_NODES) + "]"
    with pytest.raises(VitkitError, match="cfg.yaml: more than 10,000 values"):
        parse_yaml(over, "cfg.yaml")


def test_yaml_over_the_byte_cap_is_refused_before_it_is_read(tmp_path, monkeypatch):
    text = "note: " + "x" * options.MAX_YAML_BYTES + "\n"
    with pytest.raises(VitkitError, match=r"cfg.yaml: 1,048,\d{3} bytes, over the 1,048,576"):
        parse_yaml(text, "cfg.yaml")
    path = tmp_path / "big.yaml"
    path.write_text(text)
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: pytest.fail("read before its size was checked"))
    with pytest.raises(VitkitError, match="--config big.yaml: 1,048,583 bytes, over the 1,048,576 a configuration"):
        read_yaml(path, "--config big.yaml")


def test_invalid_yaml_and_missing_files_name_their_source(tmp_path):
    with pytest.raises(VitkitError, match=r"cfg.yaml: not valid YAML \("):
        parse_yaml("depth: [1, 2\n", "cfg.yaml")
    with pytest.raises(MissingFile, match="--config nowhere.yaml: no such file"):
        read_yaml(tmp_path / "nowhere.yaml", "--config nowhere.yaml")


def test_read_yaml_options_types_the_values_and_refuses_unknown_names(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("depth: 4.0\nmodel-args: {width: 8}\nmean: [0, 1]\n")
    assert read_yaml_options(path, Sample) == {"depth": 4, "model_args": {"width": 8}, "mean": (0.0, 1.0)}
    path.write_text("")
    assert read_yaml_options(path, Sample) == {}
    path.write_text("- depth\n")
    with pytest.raises(VitkitError, match=f"--config {path}: expected a mapping of option: value, got list"):
        read_yaml_options(path, Sample)
    path.write_text("depht: 4\n")
    with pytest.raises(VitkitError, match=r"--config .*: unknown option\(s\) depht; valid: depth"):
        read_yaml_options(path, Sample)
    path.write_text("depth: 2.5\n")
    with pytest.raises(VitkitError, match="args.yaml: depth: expected a whole number, got 2.5"):
        read_yaml_options(path, Sample, source="args.yaml")


# ----------------------------------------------------------------------------- flags


def parser_for(command: str | None = None, defaults: dict | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitkit train", exit_on_error=False, allow_abbrev=False)
    add_dataclass_options(parser, Sample, GROUPS, command=command, defaults=defaults)
    return parser


def test_flags_are_derived_from_the_declarations():
    parser = parser_for("train")
    args = parser.parse_args(
        ["--depth", "3", "--flips", "--mean", "0.5", "0.25", "--model-arg", "width=8", "--model-arg", "act=gelu"]
    )
    assert args.depth == 3 and args.flips is True and args.mean == [0.5, 0.25]
    assert args.model_args == [("width", 8), ("act", "gelu")]  # values parsed as YAML
    assert parser.parse_args(["--no-flips"]).flips is False
    assert not hasattr(parser.parse_args([]), "rate")  # not given: left to the caller's precedence
    with pytest.raises(argparse.ArgumentError, match="invalid choice: 'cosin'"):
        parser.parse_args(["--mode", "cosin"])
    with pytest.raises(argparse.ArgumentError, match="expected KEY=VALUE"):
        parser.parse_args(["--model-arg", "width"])
    with pytest.raises(argparse.ArgumentError, match="uses an anchor or alias"):
        parser.parse_args(["--model-arg", "width=&w 8"])


def test_flags_follow_the_command_groups_and_show_their_defaults():
    train, lr_find = parser_for("train"), parser_for("lr-find")
    assert "--speed" in train.format_help() and "--speed" not in lr_find.format_help()
    assert "--model-arg KEY=VALUE" in train.format_help()  # a mapping option: one flag per entry, singular
    assert "--recorded" not in train.format_help()
    titles = [g.title for g in train._action_groups]
    assert titles.index("model") < titles.index("optim")
    help_text = " ".join(train.format_help().split())
    assert "learning rate (default: 0.001)" in help_text and "blocks (default: 6)" in help_text
    assert "(default: False)" not in help_text  # an empty default is not shown
    with_defaults = parser_for("train", defaults={"depth": 12})
    assert with_defaults.parse_args([]).depth == 12 and with_defaults.parse_args([]).rate == 1e-3
    assert "blocks (default: 12)" in " ".join(with_defaults.format_help().split())
