"""What a run calls its model, from the training options that name it; training (run folders, summaries,
results.json, model cards) and inference (a checkpoint's summary) both ask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import get_preset, resolve_model_config


def run_label(preset: str | None, model: str | None, pretrained: str | None) -> str:
    """The preset, or the named model, else the checkpoint the run fine-tunes (whose architecture it takes)."""
    if preset and (not model or model == get_preset(preset).model):
        return preset
    if model:
        return model
    source = Path(pretrained)
    return f"finetuned-{source.parent.name if source.name in ('best', 'last') else source.name}"


def model_label(
    *,
    preset: str | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    model_args: dict[str, Any] | None = None,
    budget_size: dict[str, Any] | None = None,
    **other_options: Any,
) -> str:
    """`run_label`, and for a preset's model whose architecture a --model-arg changed, the changes after it
    ("folder-cct with stem=patch, pool=cls"); the size a --time-budget chose among the preset's own is the
    preset's. Takes a training configuration's values (e.g. a checkpoint's train_config); `other_options`,
    which do not name the model, are ignored."""
    label, model_args = run_label(preset, model, pretrained), model_args or {}
    if not preset or label != preset:
        return label
    recipe = get_preset(preset)
    chosen = (budget_size or {}).get("model_args") or {}
    _, base = resolve_model_config(recipe.model, **{**recipe.model_args, **chosen})
    _, mine = resolve_model_config(model or recipe.model, **model_args)
    changed = [f"{k}={v}" for k, v in model_args.items() if getattr(mine, k, v) != getattr(base, k, None)]
    return f"{label} with {', '.join(changed)}" if changed else label
