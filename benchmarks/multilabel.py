"""Multi-label recipes on the movie posters at equal wall clock, against the label-frequency baseline.

A seeded 15% of the posters is held out (stratified by each poster's rarest genre) and written, with the
table's other rows marked train, as a copy of train.csv with a `split` column; every recipe trains on
the rest for the same --time-budget (its own validation split picks best/ and tunes the thresholds) and
is scored on the held-out part: macro and micro mAP, F1 at its thresholds. The baseline scores every
poster with each genre's frequency in the training rows. Then `vitkit predict` on the held-out posters
(label sets), and a small plain ViT exported to the Hugging Face layout, whose transformers pipeline must
give the same labels above the thresholds and the same scores (within 1e-3) on every held-out poster.

Thresholds: the first recipe's validation and held-out scores under each way of tuning thresholds on the
validation split (each label's own best F1, as vitkit did first; shrunk toward one pooled threshold by
SHRINK positives; a minimum of positives for a label's own threshold; one pooled threshold; a flat 0.5):
F1 on the held-out posters and the mean number of labels predicted per poster against the true mean.

    python benchmarks/multilabel.py --minutes 5
    python benchmarks/multilabel.py --recipes multilabel-hybrid --epochs 12 --no-parity \
        --out benchmarks/results/multilabel_thresholds.json
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import REPO, SHARED_DATA, machine, print_table, project_path, write_json

from vitkit.data.splits import stratified_split
from vitkit.eval.multilabel import SHRINK_POSITIVES, best_f1_threshold, f1_scores, multilabel_report, tune_thresholds

POSTERS = SHARED_DATA / "movie-posters"
HOLD_OUT = 0.15
SCORE_TOLERANCE = 1e-3
# A ViT that transformers' ViTForImageClassification holds (patches, class token), for the export check.
PARITY_MODEL = ["stem=patch", "class_token=true", "pool=cls", "patch_size=4"]


def held_out_table(table: Path, out: Path, seed: int, limit: int = 0):
    """train.csv (its first `limit` rows when given) with a split column (test for the held-out rows);
    the genre names, the 0/1 labels of the train and test rows, and the held-out posters' ids."""
    with open(table, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = list(reader.fieldnames), list(reader)
    rows = rows[:limit] if limit else rows
    genres = fields[2:]
    labels = torch.tensor([[float(r[g]) for g in genres] for r in rows])
    _, test = stratified_split(labels, HOLD_OUT, seed)
    held = set(test.tolist())
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields + ["split"])
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({**row, "split": "test" if i in held else "train"})
    train = torch.tensor([i for i in range(len(rows)) if i not in held])
    return out, genres, labels[train], labels[test], [rows[i]["Id"] for i in test.tolist()]


def frequency_baseline(train: torch.Tensor, test: torch.Tensor, genres: list[str]) -> dict:
    """Every poster scored with each genre's training frequency: macro mAP is the mean frequency of the
    genres in the test rows, micro mAP what ranking (poster, genre) pairs by genre frequency gives."""
    prior = train.mean(0).expand_as(test)
    report = multilabel_report(prior, test, genres)
    return {"map_macro": report["map_macro"], "map_micro": report["map_micro"]}


def vitkit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vitkit", *args]


def train(preset: str, table: Path, minutes: float, out: Path, extra: list[str], epochs: int = 0) -> dict:
    """A recipe trained for `minutes` (or, given, exactly `epochs` epochs) and its held-out metrics."""
    length = ["--epochs", str(epochs)] if epochs else ["--time-budget", str(minutes)]
    args = ["train", "--preset", preset, "--data", str(POSTERS), "--labels", str(table)]
    args += [*length, "--out", str(out), "--no-progress", *extra]
    started = time.perf_counter()
    subprocess.run(vitkit_command(*args), check=True, cwd=REPO)
    results = json.loads((out / "results.json").read_text())
    test = results["metrics"]
    return {
        "recipe": preset,
        "command": "vitkit " + " ".join(shown(a) for a in args),
        "epochs": results["epochs_run"],
        "params_m": results["parameters"] / 1e6,
        "map_macro": test["map_macro"],
        "map_micro": test["map_micro"],
        "f1_macro": test["f1_macro"],
        "f1_micro": test["f1_micro"],
        "f1_micro@0.5": test.get("f1_micro@0.5"),
        "mean_predicted_labels": test.get("mean_predicted_labels"),
        "mean_true_labels": test.get("mean_true_labels"),
        "train_time_s": results["train_time_s"],
        "wall_s": round(time.perf_counter() - started, 1),
        "test_images": test["count"],
    }


def run_scores(run: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{split: (sigmoid scores, 0/1 targets)} of a run's best checkpoint on its validation split (the one
    that tuned its thresholds) and its test split (the held-out posters)."""
    import vitkit
    from vitkit.data.loader import BatchLoader
    from vitkit.eval.checkpoint import checkpoint_split
    from vitkit.eval.multilabel import multilabel_outputs

    classifier = vitkit.load(run, backend="torch", precision="fp32")
    scores = {}
    for split in ("val", "test"):
        _, _, _, part = checkpoint_split(classifier, None, split, {})
        loader = BatchLoader(part, 256, shuffle=False)
        scores[split] = multilabel_outputs(classifier.model, loader, classifier.input_transform)[:2]
    return scores


def minimum_count_thresholds(scores: torch.Tensor, targets: torch.Tensor, minimum: int) -> torch.Tensor:
    """Each label's own best-F1 threshold where it has `minimum` validation positives, else the pooled one."""
    pooled = best_f1_threshold(scores.flatten(), targets.flatten())
    own = tune_thresholds(scores, targets, shrink=0)
    return torch.where(targets.sum(0) >= minimum, own, torch.full_like(own, pooled))


def threshold_strategies(scores: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[dict]:
    """F1 (micro, macro) on the held-out posters and labels predicted per poster, for each way of tuning
    thresholds on the validation scores."""
    val, (test, truth) = scores["val"], scores["test"]
    strategies = {
        "per label, own best F1 (shrink 0)": tune_thresholds(*val, shrink=0),
        **{f"shrunk toward pooled, shrink {s:g}": tune_thresholds(*val, shrink=s) for s in (5, 10, 20, 50)},
        **{f"own threshold from {m} positives, else pooled": minimum_count_thresholds(*val, m) for m in (10, 30)},
        "one pooled threshold (shrink inf)": tune_thresholds(*val, shrink=float("inf")),
        "flat 0.5": torch.full((val[0].shape[1],), 0.5),
    }
    rows = []
    for name, thresholds in strategies.items():
        f1 = f1_scores(test, truth, thresholds)
        rows.append(
            {
                "thresholds": name,
                "default": name == f"shrunk toward pooled, shrink {SHRINK_POSITIVES:g}",
                "f1_micro": f1["f1_micro"],
                "f1_macro": f1["f1_macro"],
                "mean_predicted_labels": float((test >= thresholds).sum(1).double().mean()),
                "mean_true_labels": float(truth.sum(1).mean()),
                "lowest_threshold": float(thresholds.min()),
                "val_f1_micro": f1_scores(*val, thresholds)["f1_micro"],
            }
        )
    return rows


def shown(arg: str) -> str:
    """A command argument as the results record it: paths relative to the project."""
    return project_path(arg) if arg.startswith("/") else arg


def predict_label_sets(run: Path, images: list[Path]) -> tuple[list[dict], str]:
    args = ["predict", str(run), *map(str, images), "--format", "json", "--backend", "torch"]
    done = subprocess.run(vitkit_command(*args), check=True, cwd=REPO, capture_output=True, text=True)
    command = f"vitkit predict {shown(str(run))} <{len(images)} held-out posters> --format json --backend torch"
    return json.loads(done.stdout)["results"], command


def label_set_summary(results: list[dict], truth: dict[str, set[str]]) -> dict:
    sets = [{p["label"] for p in r["predictions"]} for r in results]
    true = [truth[Path(r["path"]).stem] for r in results]
    return {
        "images": len(results),
        "with_a_label": sum(bool(s) for s in sets),
        "mean_labels": sum(map(len, sets)) / len(sets),
        "exact_match": sum(s == t for s, t in zip(sets, true)) / len(sets),
        "examples": [
            {"poster": Path(r["path"]).name, "predicted": r["predictions"], "true": sorted(t)}
            for r, t in list(zip(results, true))[:3]
        ],
    }


def pipeline_parity(run: Path, export: Path, images: list[Path]) -> dict:
    """`vitkit export --format hf`, then transformers' pipeline against vitkit on every image. The label
    sets must match, but for labels whose score is within SCORE_TOLERANCE of their threshold: the pipeline
    resizes in one step, so its scores may differ by that much, and such a label may fall either side."""
    from PIL import Image
    from transformers import pipeline

    import vitkit

    subprocess.run(vitkit_command("export", str(run), str(export), "--format", "hf"), check=True, cwd=REPO)
    classifier = vitkit.load(run, backend="torch")
    hf = pipeline("image-classification", model=str(export), device="cpu")
    thresholds = dict(zip(classifier.class_names, classifier.thresholds))
    same_labels, near_threshold, worst = 0, 0, 0.0
    problem = json.loads((export / "config.json").read_text()).get("problem_type")
    for start in range(0, len(images), 64):
        chunk = images[start : start + 64]
        ours = classifier.predict([str(p) for p in chunk])
        theirs = hf([Image.open(p) for p in chunk], top_k=len(classifier.class_names))
        for mine, other in zip(ours, theirs):
            scores = {p["label"]: p["score"] for p in other}
            above = {label for label, score in scores.items() if score >= thresholds[label]}
            differ = above ^ {p["label"] for p in mine["predictions"]}
            same_labels += not differ
            near_threshold += bool(differ) and all(abs(scores[n] - thresholds[n]) <= SCORE_TOLERANCE for n in differ)
            worst = max([worst] + [abs(p["score"] - scores[p["label"]]) for p in mine["predictions"]])
        all_scores = classifier.predict_tensor(
            torch.stack([classifier.preprocessing.load_tensor(p) for p in chunk])
        ).tolist()
        for row, other in zip(all_scores, theirs):
            scores = {p["label"]: p["score"] for p in other}
            worst = max(worst, *(abs(s - scores[n]) for n, s in zip(classifier.class_names, row)))
    return {
        "images": len(images),
        "problem_type": problem,
        "same_labels_above_threshold": same_labels,
        "differ_only_within_tolerance_of_a_threshold": near_threshold,
        "max_abs_score_diff": worst,
        "agrees": same_labels + near_threshold == len(images) and worst <= SCORE_TOLERANCE,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget of each recipe")
    parser.add_argument("--parity-minutes", type=float, default=1.0, help="training budget of the export check's ViT")
    parser.add_argument("--recipes", nargs="+", default=["multilabel-hybrid", "multilabel-resnet"])
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    parser.add_argument("--limit", type=int, default=0, help="the table's first N posters only (0: all)")
    parser.add_argument("--epochs", type=int, default=0, help="train each recipe this many epochs, not --minutes")
    parser.add_argument("--no-parity", action="store_true", help="leave out the transformers pipeline check")
    parser.add_argument("--work", default="runs/multilabel-benchmark", help="run folders and the split table")
    parser.add_argument("--out", default="benchmarks/results/multilabel_posters.json")
    args = parser.parse_args()
    if not (POSTERS / "train.csv").is_file():
        print(f"no movie posters at {POSTERS}", file=sys.stderr)
        return 1
    work = REPO / args.work
    if work.exists():
        print(f"{work} exists: remove it or pass another --work", file=sys.stderr)
        return 1
    table, genres, train_labels, test_labels, test_ids = held_out_table(
        POSTERS / "train.csv", work / "posters-split.csv", args.seed, args.limit
    )
    baseline = frequency_baseline(train_labels, test_labels, genres)
    rows = [{"recipe": "label frequency", "map_macro": baseline["map_macro"], "map_micro": baseline["map_micro"]}]
    for recipe in args.recipes:
        rows.append(train(recipe, table, args.minutes, work / recipe, [], args.epochs))
        print_table(rows[-1:], [("recipe", "recipe", ""), ("map_macro", "mAP macro", ".4f")])
    thresholds = threshold_strategies(run_scores(work / args.recipes[0]))
    print(f"\nthresholds tuned on {args.recipes[0]}'s validation split, scored on the held-out posters:")
    print_table(
        thresholds,
        [
            ("thresholds", "thresholds", ""),
            ("f1_micro", "F1 micro", ".4f"),
            ("f1_macro", "F1 macro", ".4f"),
            ("mean_predicted_labels", "labels/poster", ".2f"),
            ("mean_true_labels", "true", ".2f"),
        ],
    )

    images = [POSTERS / "Images" / f"{i}.jpg" for i in test_ids]
    truth = {i: {g for g, y in zip(genres, row.tolist()) if y} for i, row in zip(test_ids, test_labels)}
    predicted, predict_command = predict_label_sets(work / args.recipes[0], images)
    label_sets = {"command": predict_command, **label_set_summary(predicted, truth)}

    parity = None
    if not args.no_parity:
        parity_args = [a for pair in PARITY_MODEL for a in ("--model-arg", pair)]
        parity_run = train("multilabel-hybrid", table, args.parity_minutes, work / "parity-vit", parity_args)
        parity = {
            "run": parity_run,
            "export_command": f"vitkit export {shown(str(work / 'parity-vit'))} <folder> --format hf",
            **pipeline_parity(work / "parity-vit", work / "parity-vit-hf", images),
        }

    columns = [
        ("recipe", "recipe", ""),
        ("epochs", "epochs", "d"),
        ("params_m", "params (M)", ".2f"),
        ("map_macro", "mAP macro", ".4f"),
        ("map_micro", "mAP micro", ".4f"),
        ("f1_macro", "F1 macro", ".4f"),
        ("f1_micro", "F1 micro", ".4f"),
        ("train_time_s", "train s", ".0f"),
    ]
    length = f"{args.epochs} epochs" if args.epochs else f"{args.minutes:g} minutes"
    print(f"\nmovie posters: {len(test_ids)} held-out posters, {length} per recipe")
    print_table(rows, columns)
    print(f"\nvitkit predict: {json.dumps({k: v for k, v in label_sets.items() if k != 'examples'})}")
    if parity is not None:
        print(f"transformers pipeline against vitkit: {json.dumps({k: v for k, v in parity.items() if k != 'run'})}")
    write_json(
        REPO / args.out,
        {
            "benchmark": "multi-label movie posters at equal wall clock",
            "command": "python benchmarks/multilabel.py " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "data": project_path(str(POSTERS)),
            "held_out": {
                "fraction": HOLD_OUT,
                "seed": args.seed,
                "posters": len(test_ids),
                "training_posters": len(train_labels),
                "how": "stratified by each poster's rarest genre (vitkit.data.splits.stratified_split)",
            },
            **({"epochs_per_recipe": args.epochs} if args.epochs else {"minutes_per_recipe": args.minutes}),
            "rows": rows,
            "thresholds": {
                "tuned_on": f"{args.recipes[0]}'s validation split; scored on the held-out posters",
                "rows": thresholds,
            },
            "predict_label_sets": label_sets,
            **({"hf_pipeline_parity": parity} if parity is not None else {}),
        },
    )
    return 0 if parity is None or parity["agrees"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
