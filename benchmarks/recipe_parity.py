"""A recipe against the published method it follows, epoch for epoch: the preset trains a fixed number of
epochs (no time budget) on a data folder, and after every epoch (or every --eval-every) its weights are
evaluated on the held-out split (the test split, else the validation split) as they are and with multi-crop
test-time augmentation (the image, two 1-pixel diagonal shifts and their mirrors), beside the number the
source publishes (the preset's `source`, models/presets.py). A preset that follows no published method
(cifar-hybrid) trains and reports the same way with --epochs and nothing beside it. One JSON per run in --out.

With --ablation the recipe trains as it was before it followed its source, then with each difference
fixed alone, then with all of them fixed (the preset as it is): which fix buys what.

    python benchmarks/recipe_parity.py                       # cifar-fast, 10 epochs, 45k train / 5k held out
    python benchmarks/recipe_parity.py --source-size         # at the source's widths (64-256-256)
    python benchmarks/recipe_parity.py --ablation            # before, each fix alone, all
    python benchmarks/recipe_parity.py --ablation schedule lookahead_ema --epochs 5
    python benchmarks/recipe_parity.py --recipe cifar-hybrid --epochs 25 --budget-size --eval-every 5
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import SHARED_DATA, cpuinfo, machine, parse_overrides, print_table, project_path, write_json

import vitkit
from vitkit.models import PRESETS
from vitkit.training import build

# cifar-fast as it was before it followed airbench94, as overrides of today's preset; its whitening took
# the first images of the training split in stored order (`stored_order_whitening`).
CIFAR_FAST_BEFORE = dict(
    batch_size=512,
    lr=0.75,
    weight_decay=1.3e-3,
    schedule="linear",
    warmup_epochs=0.5,
    lookahead=5,
    lookahead_ema=0.0,
    crop_padding_mode="zeros",
    freeze_after={},
    norm_bias_decay=False,
    model_args={"bn_eps": 1e-5},
)
# Each difference from airbench94, fixed alone: the overrides that fix it on top of CIFAR_FAST_BEFORE
# (None: the whitening sample, which is no option).
CIFAR_FAST_FIXES = {
    "whitening_sample": None,
    "lookahead_ema": dict(
        lookahead=0, lookahead_ema=0.95, lookahead_ema_every=5, lookahead_ema_start=3, lookahead_ema_ramp=3
    ),
    "schedule": dict(schedule="triangle", warmup_epochs=0, triangle_start=0.2, triangle_peak=0.23, min_lr_ratio=0.07),
    "reflect_padding": dict(crop_padding_mode="reflect"),
    "whitening_bias_frozen": dict(freeze_after={"whiten.bias": 3}),
    "norm_bias_decay": dict(norm_bias_decay=True),
    "batchnorm_eps": dict(model_args={"bn_eps": 1e-12}),
    "batch_1024": dict(batch_size=1024, lr=1.5, weight_decay=0.0153 / 11.5),
}
ABLATIONS = {"cifar-fast": (CIFAR_FAST_BEFORE, CIFAR_FAST_FIXES)}


def stored_order_whitening(size: int, seed: int) -> torch.Tensor:
    """The whitening sample before it was drawn from the whole split: its first images as stored."""
    return torch.arange(min(size, build.WHITENING_IMAGES))


def combined(*overrides: dict) -> dict:
    """Overrides applied in order; model arguments merge rather than replace each other."""
    out: dict = {}
    for layer in overrides:
        args = {**out.get("model_args", {}), **layer.get("model_args", {})}
        out.update(layer)
        if args:
            out["model_args"] = args
    return out


def check_fixes_add_up(recipe: str, data: str, before: dict, fixes: dict) -> None:
    """The recipe as it was, with every fix, must be the preset as it is: else the ablation's "all fixed"
    row would measure something the fixes do not explain."""
    from vitkit.training.resolve import make_config

    everything = combined(before, *(fix for fix in fixes.values() if fix))
    fixed, preset = make_config(preset=recipe, data=data, **everything), make_config(preset=recipe, data=data)
    differ = {k: (v, getattr(preset, k)) for k, v in fixed.to_dict().items() if v != getattr(preset, k)}
    if differ:
        raise SystemExit(f"the ablation's fixes do not add up to {recipe} as it is: (with fixes, preset) {differ}")


def cpu_model() -> str:
    """The CPU's model name as lscpu gives it (machine()'s reading of /proc/cpuinfo where lscpu is missing)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return machine()["cpu"]
    found = re.search(r"^Model name:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else machine()["cpu"]


def flags_class() -> str:
    """The CPU's class by its fastest matrix instructions: amx, avx512-bf16, avx512, avx2 or other."""
    flags = set(cpuinfo().get("flags", "").split())
    for name, flag in (("amx", "amx_bf16"), ("avx512-bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in flags:
            return name
    return "other"


def machine_record() -> dict:
    """What a parity result records of its machine: common.machine(), the CPU's model name and its class."""
    return {**machine(), "cpu": cpu_model(), "flags_class": flags_class()}


class HeldOutEvaluation:
    """A callback: after every `every`-th epoch and the last, the weights the epoch ended with (last/, just
    written) on the split the run reports, as they are and with multi-crop TTA."""

    def __init__(self, run: Path, every: int, epochs: int):
        self.run, self.every, self.epochs, self.rows = run, every, epochs, []

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        if epoch % self.every and epoch != self.epochs:
            return
        plain = vitkit.evaluate(self.run / "last")
        tta = vitkit.evaluate(self.run / "last", flip_tta=True, crop_tta=True)
        self.rows.append({"epoch": epoch, "split": plain["split"], "top1": plain["top1"], "tta_top1": tta["top1"]})
        print(f"  epoch {epoch}: {plain['split']} top-1 {plain['top1']:.4f}, multi-crop TTA {tta['top1']:.4f}",
              file=sys.stderr, flush=True)  # fmt: skip


def train_one(recipe: str, data: str, epochs: int, seed: int, overrides: dict, folder: Path, every: int) -> dict:
    """One run of `recipe` with `overrides`; the per-epoch held-out rows and the run's results."""
    options = {"data": data, "epochs": epochs, "seed": seed, "out": str(folder), "progress": False, "plots": False}
    if PRESETS[recipe].train.get("data") not in (None, data):
        options["val_split"] = 0.1  # a preset made for other data: the repository's usual held-out split
    held_out = HeldOutEvaluation(folder, every, epochs)
    result = vitkit.train(preset=recipe, callbacks=[held_out], **{**options, **overrides})
    return {"per_epoch": held_out.rows, "result": result}


SOURCE_FIELDS = ("name", "url", "result", "top1", "epochs")


def run_row(
    label: str,
    recipe: str,
    args,
    overrides: dict,
    stored_order: bool,
    machine_info: dict,
    eval_every: int = 1,
    ablation: str | None = None,
) -> dict:
    """One training run as a result row; `ablation` names its place in an ablation ("before", a fix's name or
    "all fixed"), None outside one."""
    source = PRESETS[recipe].source
    original = build.whitening_indices
    if stored_order:
        build.whitening_indices = stored_order_whitening
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"{label}: {args.epochs} epochs on {args.data} ...", file=sys.stderr, flush=True)
            out = train_one(recipe, args.data, args.epochs, args.seed, overrides, Path(tmp) / "run", eval_every)
    finally:
        build.whitening_indices = original
    last, result = out["per_epoch"][-1], out["result"]
    return {
        "recipe": label,
        "preset": recipe,
        "ablation": ablation,
        "overrides": overrides,
        "epochs": last["epoch"],
        "split": last["split"],
        "test_top1": last["top1"],  # the last epoch's weights, as the source reports its final model
        "tta_top1": last["tta_top1"],
        "per_epoch": out["per_epoch"],
        "best_checkpoint_top1": result["metrics"]["top1"],  # best/, which the validation split chose
        "train_time_s": result["train_time_s"],
        "parameters": result["parameters"],
        "data": project_path(args.data),
        "seed": args.seed,
        "source": {key: getattr(source, key) for key in SOURCE_FIELDS} if source else None,
        "machine": machine_info,
    }


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--recipe", default="cifar-fast",
        help="a preset (models/presets.py); one without a published source needs --epochs",
    )  # fmt: skip
    parser.add_argument("--data", default=str(SHARED_DATA / "cifar10-train"))
    parser.add_argument("--epochs", type=int, help="default: the source's epochs, rounded up")
    parser.add_argument(
        "--budget-size", action="store_true",
        help="train at the size the preset's time budget picks for a run of --epochs (Preset.budget_sizes)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--eval-every", type=int, default=1, metavar="N",
        help="evaluate after every N-th epoch and the last (each evaluation reads the held-out split 7 times)",
    )  # fmt: skip
    parser.add_argument("--source-size", action="store_true", help="train at the source's architecture size")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="training overrides")
    parser.add_argument(
        "--ablation",
        nargs="*",
        metavar="FIX",
        help="train the recipe as it was before it followed its source, with each fix alone (all, or those "
        "named), and as it is",
    )
    parser.add_argument("--out", default="benchmarks/results/recipe_parity")
    args = parser.parse_args()
    if args.eval_every < 1:
        raise SystemExit(f"--eval-every {args.eval_every}: give a number of epochs, 1 or more")
    preset = PRESETS.get(args.recipe)
    if preset is None:
        raise SystemExit(f"--recipe {args.recipe}: not a preset; the presets are {', '.join(PRESETS)}")
    source = preset.source
    if source is None and (args.epochs is None or args.source_size or args.ablation is not None):
        with_source = ", ".join(name for name, p in PRESETS.items() if p.source is not None)
        raise SystemExit(
            f"--recipe {args.recipe} follows no published source: give --epochs (and no --source-size or "
            f"--ablation), or take a preset with one: {with_source}"
        )
    args.epochs = args.epochs or math.ceil(source.epochs)
    extra = parse_overrides(args.set)
    if args.source_size:
        extra = combined({"model_args": source.model_args}, extra)
    if args.budget_size:
        sizes = [changes for epochs, changes in preset.budget_sizes if epochs <= args.epochs]
        if not sizes:
            raise SystemExit(f"--budget-size: {args.recipe} has no larger size for {args.epochs} epochs")
        extra = combined({"model_args": sizes[-1]}, extra)
    runs = [(args.recipe + "".join(f" {k}={v}" for k, v in extra.items()), extra, False, None)]
    if args.ablation is not None:
        if args.recipe not in ABLATIONS:
            raise SystemExit(f"--ablation: none is defined for {args.recipe}; there is one for {', '.join(ABLATIONS)}")
        before, fixes = ABLATIONS[args.recipe]
        check_fixes_add_up(args.recipe, args.data, before, fixes)
        unknown = sorted(set(args.ablation) - set(fixes))
        if unknown:
            raise SystemExit(f"--ablation {' '.join(unknown)}: unknown; the fixes are {', '.join(fixes)}")
        suffix = runs[0][0][len(args.recipe) :]
        runs = [(f"{args.recipe} before{suffix}", combined(before, extra), True, "before")]
        for name in args.ablation or list(fixes):
            fix = fixes[name]
            overrides = combined(before, fix or {}, extra)
            runs.append((f"{args.recipe} before + {name}{suffix}", overrides, fix is not None, name))
        runs.append((f"{args.recipe} all fixed{suffix}", extra, False, "all fixed"))
    machine_info = machine_record()
    out = Path(args.out)
    rows = []
    for label, overrides, stored_order, ablation in runs:
        row = run_row(label, args.recipe, args, overrides, stored_order, machine_info, args.eval_every, ablation)
        rows.append(row)
        name = f"{slug(label)}-{Path(args.data).name}-{args.epochs}ep-seed{args.seed}-{machine_info['flags_class']}"
        write_json(out / f"{name}.json", row)
    print()
    epoch_columns = [("epoch", "epoch", "d"), ("top1", "top-1", ".4f"), ("tta_top1", "multi-crop TTA", ".4f")]
    run_columns = [("recipe", "recipe", "s"), ("epochs", "epochs", "d"), ("test_top1", "top-1", ".4f"),
                   ("tta_top1", "multi-crop TTA", ".4f")]  # fmt: skip
    if source:
        epoch_columns.append(("source", f"{source.name} (TTA, {source.epochs:g} ep)", ".4f"))
        run_columns += [("source", source.name, ".4f"), ("gap", "TTA - source", "+.4f")]
    for row in rows:
        print(f"{row['recipe']} ({row['split']} split):")
        last_epoch = row["epochs"]
        print_table(
            [dict(r, source=source.top1 if source and r["epoch"] == last_epoch else None) for r in row["per_epoch"]],
            epoch_columns,
        )
        print()
    if args.ablation is not None:  # what each fix buys: its TTA top-1 against the recipe as it was
        run_columns.append(("gain", "TTA - before", "+.4f"))
    before_tta = rows[0]["tta_top1"]
    print_table(
        [
            dict(r, source=source and source.top1, gap=source and r["tta_top1"] - source.top1,
                 gain=r["tta_top1"] - before_tta)
            for r in rows
        ],
        [*run_columns, ("train_time_s", "train s", ".0f")],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
