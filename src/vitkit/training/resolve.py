"""The values of a training configuration, resolved once: a new run's by `make_config`, a resumed run's
by `resume_config`.

Precedence, lowest first: declared defaults < dataset defaults < preset < YAML config file < flags. A
preset is complete on its own: it sets every option the dataset suggests (those it does not name to
their declared defaults), except that a native-size preset leaves a built-in dataset's own input size
and crop padding to the data. The resolved configuration is plain: the model and its arguments filled
in, nothing left to look up in a preset; it is what args.yaml records and what `--resume` reads."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ..data.builtin import BUILTIN
from ..data.hf import HUB_PREFIX
from ..data.prepare import DATASET_DEFAULTS, dataset_defaults
from ..errors import MissingFile, VitkitError
from ..models import get_preset
from ..models.naming import run_label
from ..options import check_known, flag, names_where, read_yaml_options
from ..runfiles import ARGS, RUN_RECORD
from .config import RESUMABLE, TrainConfig, explicit_values
from .sizing import BudgetSize

# Options naming local files or folders: recorded absolute, so a run folder works from any directory.
PATH_OPTIONS = names_where(TrainConfig, path=True)


def absolute_paths(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with the local paths among PATH_OPTIONS made absolute (built-in names, hf: sources and
    hub ids, which are no local path, as given)."""
    absolute = {}
    for key in PATH_OPTIONS:
        value = values.get(key)
        local = isinstance(value, str) and value not in BUILTIN and not value.startswith(HUB_PREFIX)
        if local and Path(value).exists():
            absolute[key] = str(Path(value).resolve())
    return {**values, **absolute}


def dataset_layer(data: str, pretrained: str | None) -> dict[str, Any]:
    """The values the dataset suggests; a folder's input size is left to the checkpoint when fine-tuning
    (build.input_size decides from the checkpoint and the photos)."""
    values = dataset_defaults(data)
    if pretrained and data not in BUILTIN:
        values = {k: v for k, v in values.items() if k != "image_size"}
    return values


def preset_layer(preset, data: str, suggested: dict[str, Any]) -> dict[str, Any]:
    """The preset's values: every option the dataset suggested (`suggested`) set to the preset's or the
    declared default, so no dataset value leaks into a recipe or a seed reproduction; but a native-size
    preset leaves a built-in dataset's own size and crop padding in place."""
    if preset is None:
        return {}
    declared = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in suggested}
    values = {**declared, **preset.train, "preset": preset.name}
    if preset.native_size:
        native = DATASET_DEFAULTS.get(data, {})
        values = {k: v for k, v in values.items() if k not in ("image_size", "crop_padding") or k not in native}
    return values


def make_config(config: str | Path | None = None, **values: Any) -> TrainConfig:
    """The resolved configuration of a new run: declared defaults < dataset defaults < preset < the YAML
    file `config` < `values` (the flags). The model and its arguments are filled in; with a --time-budget
    and a preset that has sizes, `budget_size` holds the candidates, which `build` measures and chooses
    among once the data is ready (`choose_budget_size`)."""
    check_known(values, TrainConfig, "training options")
    values = explicit_values(config, values)
    preset = get_preset(values["preset"]) if values.get("preset") else None
    if preset is not None:
        values = {**values, "preset": preset.name}  # an earlier name of it (PRESET_ALIASES) recorded as today's
    data = values.get("data") or (preset.train.get("data") if preset else None) or TrainConfig.data
    suggested = dataset_layer(data, values.get("pretrained"))
    layers = {**suggested, **preset_layer(preset, data, suggested), **values}
    cfg = TrainConfig.from_dict(absolute_paths(layers))
    if preset and preset.budget_sizes and not values.get("model") and cfg.time_budget and not cfg.pretrained:
        if cfg.budget_size is None:  # the user's --model-arg wins over every size
            fixed = values.get("model_args") or {}
            cfg = dataclasses.replace(cfg, budget_size=BudgetSize.among(preset.budget_sizes, fixed))
    return cfg


def size_pending(cfg: TrainConfig) -> bool:
    """The --time-budget size choice is still to be made (a new run; a resumed or repeated run has it)."""
    return cfg.budget_size is not None and cfg.budget_size.pending


def with_budget_size(cfg: TrainConfig, record: BudgetSize) -> TrainConfig:
    """`cfg` with the chosen size (`record`, see sizing.choose_size) in its model arguments and recorded."""
    return dataclasses.replace(cfg, model_args={**cfg.model_args, **record.model_args}, budget_size=record)


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / (cfg.name or f"{run_label(cfg.preset, cfg.model, cfg.pretrained)}-{Path(cfg.data).name}")


def saved_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The configuration a run folder was started with (args.yaml of any vitkit version)."""
    path = Path(run_dir) / ARGS
    if not path.is_file():
        raise MissingFile(f"{run_dir} is not a vitkit run folder (no {ARGS}): nothing to resume")
    try:
        saved = TrainConfig(**read_yaml_options(path, TrainConfig, str(path)))
        return with_recorded_size(saved, Path(run_dir)).resolved()
    except VitkitError as e:
        raise VitkitError(f"{path}: {e}; restore it from a backup") from None


def with_recorded_size(saved: TrainConfig, run_dir: Path) -> TrainConfig:
    """args.yaml from before the --time-budget size choice was recorded in it: the choice as run.json
    recorded it, with the architecture it gave, so the run resumes as the size it started with."""
    preset = get_preset(saved.preset) if saved.preset and not saved.model else None
    if saved.budget_size or preset is None or not preset.budget_sizes:
        return saved
    try:
        record = json.loads((run_dir / RUN_RECORD).read_text()).get("budget_size")
    except (OSError, ValueError):
        record = None
    if not record and saved.time_budget:
        raise VitkitError(
            "it does not record the model size this --time-budget run chose, so its architecture cannot be "
            "rebuilt: start a new run, or give the size with --model-arg"
        )
    if not record:
        return saved
    record = BudgetSize.from_dict(record, f"{RUN_RECORD}: budget_size")
    model_args = {**preset.model_args, **record.model_args, **saved.model_args}
    return dataclasses.replace(saved, model=preset.model, model_args=model_args, budget_size=record)


def resume_changes(saved: TrainConfig, changes: dict[str, Any]) -> dict[str, Any]:
    """The changes a resumed run may take; any other option that differs from the saved run is an
    error naming it (the run would no longer compute what it started computing)."""
    refused = sorted(k for k, v in changes.items() if k not in RESUMABLE and getattr(saved, k, v) != v)
    if refused:
        names = ", ".join(flag(k) for k in refused)
        raise VitkitError(
            f"{names} cannot change when resuming (the run was started with "
            f"{', '.join(f'{k}={getattr(saved, k)!r}' for k in refused)}); only {', '.join(map(flag, RESUMABLE))} "
            "can. Start a new run to change the others"
        )
    return {k: v for k, v in changes.items() if k in RESUMABLE}


def resume_config(run_dir: str | os.PathLike, **changes: Any) -> TrainConfig:
    """The saved configuration of a run with `resume` set and the allowed changes applied."""
    saved = saved_config(run_dir)
    changes = resume_changes(saved, changes)
    if "epochs" in changes and saved.time_budget:
        changes.setdefault("time_budget", 0.0)  # a budget run extended to --epochs: the epochs, not the clock, end it
    return dataclasses.replace(saved, **changes, resume=True, out=str(run_dir)).validate()
