"""Recipes side by side at equal wall clock: each trains with `--time-budget` on the same data, and
the held-out top-1 after every epoch is recorded against elapsed time (CSV + PNG), with the final
test top-1 of the best checkpoint, its top-1 under multi-crop test-time augmentation (the image, two
one-pixel diagonal shifts and their mirrors), the epochs and training images/s, and the share of this
machine's measured matrix-product peak that the training step reached (model FLOPs x images/s / peak).
With --seeds N each recipe trains N times (seeds 0..N-1): the rows, and per recipe the mean and spread.

    python benchmarks/time_to_accuracy.py --data ../shared/data/cifar10-dev --minutes 10 \
        --recipes cifar-hybrid cifar-resnet keras-vit-cifar100
    python benchmarks/time_to_accuracy.py --minutes 10 --recipes cifar-gmlp --set auto_augment=trivial --merge
    python benchmarks/time_to_accuracy.py --data ../shared/data/cifar10-train --minutes 30 --flip-tta
    python benchmarks/time_to_accuracy.py --data ../shared/data/cifar10-train --minutes 30 \
        --recipes cifar-fast cifar-hybrid
    python benchmarks/time_to_accuracy.py --data ../shared/data/cifar10-train --minutes 5 --recipes cifar-fast --seeds 5
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from common import (  # noqa: E402
    SHARED_DATA,
    machine,
    matmul_peak,
    merge_rows,
    parse_overrides,
    print_table,
    training_flops_per_image,
    write_json,
)

import vitkit  # noqa: E402
from vitkit.models import PRESETS, load_model  # noqa: E402


def peaks(device: str) -> dict:
    """GFLOP/s of a large matrix product here, fp32 and (where the hardware has native bf16) bf16."""
    import torch

    from vitkit.runtime import resolve_device, use_bf16

    device = resolve_device(device)
    out = {"fp32": matmul_peak(device, "float32") / 1e9}
    if use_bf16("auto", device):
        out["bf16"] = matmul_peak(device, "bfloat16") / 1e9
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def run(recipe: str, data: str, minutes: float, out: Path, extra: dict, label: str, flip_tta: bool, peak: dict) -> dict:
    # the run folder is temporary: its figures would be drawn for nobody, out of the budget's time
    options = {"data": data, "time_budget": minutes, "out": str(out), "progress": False, "plots": False, **extra}
    options["preset" if recipe in PRESETS else "model"] = recipe
    if recipe in PRESETS and PRESETS[recipe].train.get("data") not in (None, data):
        options["val_split"] = 0.1
    result = vitkit.train(**options)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    curve = [(float(r["time_s"]), float(r["val_top1"])) for r in rows]
    # the first epoch's rate includes the start of the budget's sizing and allocation: the median epoch
    images_per_s = statistics.median(float(r["images_per_s"]) for r in rows)
    run_info = json.loads((out / "run.json").read_text())
    model, _ = load_model(out / "best")
    flops = training_flops_per_image(model, model.config.image_size, run_info.get("device", "cpu"))
    precision = "bf16" if "bf16" in peak and extra.get("amp", "auto") != "off" else "fp32"
    return {
        "recipe": label,
        "preset": recipe,
        "overrides": extra,
        "epochs": len(rows),
        "images_per_s": images_per_s,
        "train_gflop_per_image": flops / 1e9,
        # the training step's matrix products and convolutions against a large matrix product's rate
        "peak_share": flops * images_per_s / (peak[precision] * 1e9),
        "peak_precision": precision,
        "peak_gflops": peak[precision],  # measured by this invocation, before its runs
        "test_top1": result["metrics"]["top1"],
        # the best checkpoint again, airbench's multi-crop TTA: the image, two 1-pixel diagonal shifts, mirrors
        "test_top1_multicrop_tta": vitkit.evaluate(out, flip_tta=True, crop_tta=True)["top1"],
        # the same checkpoint and split, each image's logits averaged with its mirror image's
        "test_top1_flip_tta": vitkit.evaluate(out, flip_tta=True)["top1"] if flip_tta else None,
        "best_val_top1": max(v for _, v in curve),
        # The model as the budget left it, on the same split: where the data has no test split the
        # held-out split also picks the best checkpoint, so only these figures are free of that choice.
        "final_top1": vitkit.evaluate(out / "last")["top1"],
        "final_top1_flip_tta": vitkit.evaluate(out / "last", flip_tta=True)["top1"] if flip_tta else None,
        "train_time_s": result["train_time_s"],
        "params_m": result["parameters"] / 1e6,
        "curve": curve,
    }


def seed_summary(results: list[dict]) -> list[dict]:
    """Per recipe run with several seeds: mean, standard deviation, minimum and maximum of its top-1s."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        if r.get("seed") is not None:
            groups.setdefault(r["preset"] + "".join(f" {k}={v}" for k, v in r["overrides"].items()), []).append(r)
    summary = []
    for recipe, rows in groups.items():
        if len(rows) < 2:
            continue
        entry = {"recipe": recipe, "seeds": len(rows), "epochs_mean": statistics.mean(r["epochs"] for r in rows)}
        for key in ("test_top1", "test_top1_multicrop_tta"):
            values = [r[key] for r in rows]
            entry |= {
                f"{key}_mean": statistics.mean(values),
                f"{key}_std": statistics.stdev(values),
                f"{key}_min": min(values),
                f"{key}_max": max(values),
            }
        summary.append(entry)
    return summary


def save(
    results: list[dict], out: Path, name: str, minutes: float, data: str, machine_info: dict, peak: dict | None = None
) -> None:
    """CSV of the curves, the PNG plot, the table and the JSON, best test top-1 first."""
    results = sorted(results, key=lambda r: -r["test_top1"])
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["recipe", "time_s", "val_top1"])
        for r in results:
            writer.writerows([r["recipe"], t, v] for t, v in r["curve"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    # one colour per recipe; its variants (labels with overrides after the name) share it, dashed
    recipes = list(dict.fromkeys(r["recipe"].split()[0] for r in results))
    for r in results:
        recipe, *variant = r["recipe"].split()
        ax.plot(
            [t / 60 for t, _ in r["curve"]],
            [v for _, v in r["curve"]],
            "--o" if variant else "-o",
            color=plt.get_cmap("tab10")(recipes.index(recipe) % 10),
            markersize=3,
            label=f"{r['recipe']} (test {r['test_top1']:.3f})",
        )
    ax.set_xlabel("wall clock (minutes)")
    ax.set_ylabel("held-out top-1")
    ax.set_title(f"{Path(data).name}: {minutes:g}-minute budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: the curves fill the axes
    fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
    print_table(
        results,
        [
            ("recipe", "recipe", "s"),
            ("params_m", "params (M)", ".2f"),
            ("epochs", "epochs", "d"),
            ("images_per_s", "img/s", ".0f"),
            ("peak_share", "peak share", ".3f"),
            ("best_val_top1", "best val top-1", ".3f"),
            ("test_top1", "test top-1", ".3f"),
            ("test_top1_flip_tta", "flip TTA", ".3f"),
            ("test_top1_multicrop_tta", "multi-crop TTA", ".3f"),
            ("final_top1", "final top-1", ".3f"),
            ("final_top1_flip_tta", "final flip TTA", ".3f"),
        ],
    )
    summary = seed_summary(results)
    if summary:
        print()
        print_table(
            summary,
            [
                ("recipe", "recipe", "s"),
                ("seeds", "seeds", "d"),
                ("epochs_mean", "epochs", ".1f"),
                ("test_top1_mean", "top-1 mean", ".4f"),
                ("test_top1_std", "std", ".4f"),
                ("test_top1_min", "min", ".4f"),
                ("test_top1_max", "max", ".4f"),
                ("test_top1_multicrop_tta_mean", "multi-crop mean", ".4f"),
                ("test_top1_multicrop_tta_std", "std", ".4f"),
            ],
        )
    payload = {"machine": machine_info, "data": data, "minutes": minutes, "results": results}
    if peak is not None:
        payload["peak_gflops"] = peak
    if summary:
        payload["seed_summary"] = summary
    write_json(out / f"{name}.json", payload)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA / "cifar10-dev"))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--recipes", nargs="+", default=["cifar-hybrid", "cifar-resnet"])
    parser.add_argument("--train-limit", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/time_to_accuracy")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="training overrides, e.g. mixup=0.8")
    parser.add_argument("--label", help="name of the result row (default: the recipe, plus the overrides)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="add to the saved results of this data and budget; rows of the same name are replaced",
    )
    parser.add_argument(
        "--flip-tta", action="store_true", help="also report test top-1 with test-time flip augmentation"
    )
    parser.add_argument(
        "--seeds", type=int, default=0, help="train each recipe with seeds 0..N-1 and report mean and spread"
    )
    parser.add_argument("--plot-only", action="store_true", help="redraw CSV/PNG/table from the saved JSON")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{Path(args.data).name}-{args.minutes:g}min"
    if args.plot_only:
        saved = json.loads((out / f"{name}.json").read_text())
        saved = json.loads((out / f"{name}.json").read_text())
        save(saved["results"], out, name, saved["minutes"], saved["data"], saved["machine"], saved.get("peak_gflops"))
        return 0
    extra = {"train_limit": args.train_limit} if args.train_limit else {}
    extra.update(parse_overrides(args.set))
    peak = peaks(extra.get("device", "auto"))
    print(f"matrix-product peak here: {', '.join(f'{k} {v:.0f} GFLOP/s' for k, v in peak.items())}", file=sys.stderr)
    results = []
    seeds = range(args.seeds) if args.seeds else [None]
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes:
            for seed in seeds:
                label = " ".join([recipe] + args.set)
                if args.label:  # several recipes: each row keeps its recipe's name before the label
                    label = args.label if len(args.recipes) == 1 else f"{recipe} {args.label}"
                options = extra if seed is None else {**extra, "seed": seed}
                if seed is not None:
                    label += f" seed={seed}"
                print(f"{label}: {args.minutes} min ...", file=sys.stderr, flush=True)
                folder = Path(tmp) / (recipe if seed is None else f"{recipe}-seed{seed}")
                row = run(recipe, args.data, args.minutes, folder, options, label, args.flip_tta, peak)
                row["seed"] = seed
                row["overrides"] = extra
                results.append(row)
    if args.merge:
        results = merge_rows(out / f"{name}.json", results, "recipe", "results")
    save(results, out, name, args.minutes, args.data, machine(), peak)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
