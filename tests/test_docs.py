"""The documentation's generated parts: the options reference lists every flag `vitkit train --help`
lists, README.md's model and preset tables match the registry, and the benchmarks page reads every
results file. (CI builds the whole site with `mkdocs build --strict`.)"""

import argparse
import importlib.util
import json
import re

from conftest import ROOT

from vitkit.cli import build_parser


def docs_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def doc_text(name: str) -> str:
    """A docs page with its line breaks and runs of spaces as single spaces, as a sentence reads."""
    return " ".join((ROOT / "docs" / name).read_text().split())


def subparser(name: str) -> argparse.ArgumentParser:
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices[name]


def section(page: str, command: str) -> str:
    """The part of the options page about one command."""
    start = page.index(f"## `vitkit {command}`")
    following = page.find("\n## ", start + 1)
    return page[start : following if following != -1 else len(page)]


def as_cell(text: str) -> str:
    """Text as it reads in a Markdown table cell."""
    return text.replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;")


def test_the_options_reference_lists_every_train_flag_with_its_help():
    train = section(docs_hooks().options_reference(), "train")
    rows = {}
    for line in train.splitlines():
        if line.startswith("| `--"):
            for name in re.findall(r"`(--[a-z0-9-]+)`", line.split(" | ")[0]):
                rows[name] = line
    parser = subparser("train")
    flags = [s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")]
    assert len(flags) > 80  # the parser really is train's, every TrainConfig field and its --no- form
    missing = [flag for flag in flags if flag not in rows]
    assert not missing, f"the options reference lacks {missing}"
    assert set(rows) == set(flags), f"the options reference lists flags train does not take: {set(rows) - set(flags)}"
    for action in parser._actions:
        if not action.option_strings or action.option_strings[0] == "-h":
            continue
        row = rows[action.option_strings[0]].replace("`", "")
        help_text, default = re.match(r"(.*?)(?:\s*\(default: (.*)\))?$", " ".join(action.help.split())).groups()
        words = as_cell(" ".join(help_text.split()[:4]))
        assert words in row, (action.option_strings[0], words)
        assert default is None or as_cell(default.split(",")[0]) in row, (action.option_strings[0], default)


def test_the_readme_tables_are_generated_from_the_registry():
    hooks = docs_hooks()
    readme = (ROOT / "README.md").read_text()
    assert "<!-- vitkit:presets:start -->" in readme and "<!-- vitkit:models:start -->" in readme
    assert hooks.readme_with_tables(readme) == readme, "README.md's tables are stale: run python docs/hooks.py"
    from vitkit.models import PRESETS, list_models

    for name in list_models("all"):
        assert f"`{name}`" in readme
    assert len(PRESETS) == hooks.presets_table().count("\n| `")


def test_the_benchmarks_page_reads_every_results_file():
    page = docs_hooks().benchmarks_page()
    results = ROOT / "benchmarks" / "results"
    for path in sorted(results.glob("time_to_accuracy/*.json")):
        assert f"(curves/{path.stem}.png)" in page, path.name
    for stem in ("throughput", "vs_keras"):
        for path in sorted(results.glob(f"{stem}*.json")):
            named = "" if path.name == f"{stem}.json" else f" --json benchmarks/results/{path.name}"
            assert f"{named}`" in page and json.loads(path.read_text())["machine"]["date"] in page, path.name
    for heading in ("## Time to accuracy", "## Throughput per preset", "## Data pipeline", "## Serving"):
        assert heading in page


def test_the_resume_rule_lists_exactly_the_flags_a_resume_may_change():
    """training.md's list of what a resume may change is the declarations' (RESUMABLE), flag for flag."""
    from vitkit.training.config import RESUMABLE

    page = doc_text("training.md")
    listed = re.search(r"A resume may change only how the rest of the run executes \(([^)]*)\)", page).group(1)
    flags = re.findall(r"`--([a-z-]+)`", listed)
    assert {re.sub(r"^no-", "", flag).replace("-", "_") for flag in flags} == set(RESUMABLE)


def test_the_recipes_share_the_values_the_models_page_says_except_where_it_says_not():
    from vitkit.models import PRESETS

    page = doc_text("models.md")
    assert "with three exceptions: `cifar-fast` follows airbench94" in page
    shared = dict(optimizer="adamw", weight_decay=0.05, schedule="cosine", warmup_epochs=1, batch_size=64, hflip=True)
    exceptions = {
        "cifar-fast": dict(optimizer="sgd", nesterov=True, batch_size=1024, schedule="triangle", label_smoothing=0.2),
        "cifar-hybrid": dict(shared, label_smoothing=0.2, crop_padding=2, crop_padding_mode="reflect"),
    }
    for name, preset in PRESETS.items():
        if not preset.description.startswith("Recipe"):
            continue
        multilabel = name.startswith("multilabel-")
        expected = exceptions.get(name, dict(shared, label_smoothing=0.0 if multilabel else 0.1))
        assert {key: preset.train.get(key) for key in expected} == expected, name
