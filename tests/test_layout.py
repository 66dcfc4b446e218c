"""The source tree keeps its structural promises: modules small enough to read, packages that never import
the top-level API, no pointers from the library into the benchmark scripts, and option names spelled out as
text only where nothing declared can say them."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import io
import pkgutil
import tokenize
from collections import Counter
from pathlib import Path

from conftest import ROOT

import vitkit
from vitkit.options import flag

SOURCE = ROOT / "src" / "vitkit"
MAX_LINES = 450
MAX_OPTION_NAME_LITERALS = 30

# Quoted option names that are keys of formats vitkit does not own, so no declaration of vitkit's can spell
# them: (file under src/vitkit, name) -> why.
NOT_VITKITS = {
    ("pretrained/hf.py", "image_size"): "a Hugging Face ViTConfig key (config.json read and written)",
    ("pretrained/hf.py", "crop_pct"): "a Hugging Face image processor key (preprocessor_config.json)",
    ("pretrained/timm.py", "crop_pct"): "a key of timm's pretrained_cfg",
    ("training/optim.py", "weight_decay"): "PyTorch's optimizer param-group key",
    ("check/labels.py", "weight_decay"): "PyTorch's optimizer param-group key",
}
# Fields of vitkit's own file formats and reports that share an option's name but do not refer to the option
# (renaming them would change what users and older run folders read): (file under src/vitkit, name) -> what.
FORMAT_FIELDS = {
    ("check/__init__.py", "label_errors"): "check.json's list of findings",
    ("check/report.py", "label_errors"): "check.json's list of findings",
    ("check/__init__.py", "multi_label"): "check.json's kind of data",
    ("check/report.py", "multi_label"): "check.json's kind of data",
    ("check/labels.py", "image_size"): "check.json's record of the label check's resolution",
    ("serve/app.py", "image_size"): "the JSON of serve's /health and /labels",
    ("serve/app.py", "multi_label"): "the JSON of serve's /health and /labels",
    ("inference/classifier.py", "multi_label"): "a checkpoint's metadata key",
    ("inference/loading.py", "multi_label"): "a checkpoint's metadata key",
    ("models/io.py", "image_size"): "a checkpoint's config.json and preprocessing keys",
    ("data/preprocess.py", "image_size"): "a checkpoint's preprocessing keys",
    ("data/preprocess.py", "crop_pct"): "a checkpoint's preprocessing keys",
    ("eval/checkpoint.py", "flip_tta"): "the evaluation report's record of the TTA used",
    ("eval/checkpoint.py", "crop_tta"): "the evaluation report's record of the TTA used",
    ("eval/summary.py", "flip_tta"): "the evaluation report's record of the TTA used",
    ("eval/summary.py", "crop_tta"): "the evaluation report's record of the TTA used",
}


def sources() -> list[Path]:
    return sorted(SOURCE.rglob("*.py"))


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(SOURCE)): n for p in sources() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def imports_api(path: Path) -> bool:
    """Whether the module at `path` imports vitkit.api in any spelling (`from .. import api`, `from ..api
    import x`, `import vitkit.api`, `from vitkit import api`), at its top or inside a function."""
    package = ".".join(path.relative_to(SOURCE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name.split(".")[:2] == ["vitkit", "api"] for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target.split(".")[:2] == ["vitkit", "api"]:
                return True
            if target == "vitkit" and any(a.name == "api" for a in node.names):
                return True
    return False


def test_no_package_imports_the_api():
    """vitkit.api is the layer over the packages: a module inside one (models/, training/, serve/, ...)
    that imported it would turn the layers into a cycle."""
    inside = [p for p in sources() if p.parent != SOURCE]
    assert not [str(p.relative_to(SOURCE)) for p in inside if imports_api(p)]


def test_the_library_never_points_into_benchmarks():
    """Measured numbers live in benchmarks/results; the library does not cite the scripts or their files."""
    assert not [str(p.relative_to(SOURCE)) for p in sources() if "benchmarks/" in p.read_text()]


def option_classes() -> list[type]:
    """Every dataclass in vitkit whose fields are declared through `vitkit.options.option()` (whose metadata
    holds a group and the commands that take it), found by importing every module."""
    found = []
    for module in pkgutil.walk_packages(vitkit.__path__, "vitkit."):
        if module.name.endswith("__main__"):  # runs the command line
            continue
        for obj in vars(importlib.import_module(module.name)).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.name:
                if any({"group", "commands"} <= set(f.metadata) for f in dataclasses.fields(obj)):
                    found.append(obj)
    return found


def option_name_literals(include_format_fields: bool = False, by_file: bool = True) -> Counter:
    """Quoted option names per file (path under src/vitkit).

    An option name is the name of a compound option (one with an underscore in it, as `batch_size`; a
    single word such as `data` or `lr` is ordinary English and not counted) among the fields of the classes
    declared through `option()`: TrainConfig with DataOptions and AugmentSpec, and each command's options
    (InferenceOptions, CheckOptions, ServeOptions, EvaluationOptions, ...), found by `option_classes`. A
    literal counts when it is a whole quoted string, single or double quotes, plain or raw, equal to such a
    name in underscore form (`"batch_size"`) or as its flag (`"--batch-size"`); text inside a longer string
    or an f-string is not counted. Left out: the occurrences in NOT_VITKITS, keys of formats
    that vitkit does not own (Hugging Face and timm configurations, PyTorch's optimizer param groups), and
    in FORMAT_FIELDS, fields of vitkit's own formats that share an option's name (counted with
    `include_format_fields`). Counts are per file, or per (file, name) without `by_file`."""
    names = {
        f.name for cls in option_classes() for f in dataclasses.fields(cls) if "group" in f.metadata and "_" in f.name
    }
    spellings = {name: name for name in names} | {flag(name): name for name in names}
    counts = Counter()
    for path in sources():
        where = str(path.relative_to(SOURCE))
        for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            prefix = token.string[: len(token.string) - len(token.string.lstrip("rRbBuUfF"))]
            if token.type != tokenize.STRING or "f" in prefix.lower():  # an f-string is text with values in it
                continue
            value = ast.literal_eval(token.string)
            if value in spellings and (where, spellings[value]) not in NOT_VITKITS:
                counts[where, spellings[value]] += 1
    if not include_format_fields:
        counts = Counter({key: n for key, n in counts.items() if key not in FORMAT_FIELDS})
    if not by_file:
        return counts
    files = Counter()
    for (where, _), n in counts.items():
        files[where] += n
    return files


def test_option_names_are_spelled_out_at_most_30_times():
    """An option's name is said by its declaration: code reaches an option through the configuration's
    attributes or lists derived from the declarations (`names_where`, `ranked`), not by spelling it."""
    counts = option_name_literals()
    listed = ", ".join(f"{where} {n}" for where, n in counts.most_common())
    assert sum(counts.values()) <= MAX_OPTION_NAME_LITERALS, f"{sum(counts.values())} quoted option names: {listed}"


def test_every_format_field_left_out_is_still_there():
    """FORMAT_FIELDS names only fields the code still spells, so the list cannot hide a new use elsewhere."""
    spelled = option_name_literals(include_format_fields=True, by_file=False)
    assert not [key for key in FORMAT_FIELDS if key not in spelled]


def test_the_count_finds_both_spellings_and_skips_longer_text(tmp_path, monkeypatch):
    """The counting rule itself: a whole quoted name counts in either spelling and quote style; a name
    inside longer text, an f-string or a comment does not; an excluded format key does not."""
    tree = tmp_path / "vitkit"
    (tree / "pretrained").mkdir(parents=True)
    (tree / "pretrained" / "hf.py").write_text('a = "image_size"\n')
    (tree / "m.py").write_text(
        "a = {'batch_size': 1, \"--batch-size\": 2, r'time_budget': 3}\n"
        'b = "the batch_size", f"{a}batch_size"  # "batch_size"\n'
    )
    monkeypatch.setitem(globals(), "SOURCE", tree)
    assert option_name_literals() == Counter({"m.py": 3})
