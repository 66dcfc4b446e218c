"""Scores a user can trust: calibration and unknown-input rejection of trained vitkit models.

A CIFAR-10 model (the cifar-fast recipe, trained with --time-budget on the CIFAR-10 training images less a
held-out tenth: every tenth file of each class, sorted by name) is scored on the held-out CIFAR-10 images
(in-distribution), on CIFAR-100 (near-OOD: the cifar100-dev test shard) and on movie posters,
Fashion-MNIST's test images and the flowers-mini photos (far-OOD); a flowers model (cifar-fast on
flowers-mini from scratch, or --flowers-preset's recipe, e.g. a pretrained ViT fine-tuned) on its validation
photos against CIFAR-10, posters and Fashion-MNIST. Each image is scored as `--reject-unknown` scores it
(with its mirror, for models trained with flips). For each post-hoc
method (msp, energy, knn; vitkit.eval.ood): AUROC and FPR at 95% TPR, beside OpenOOD v1.5's published
ResNet-18 numbers for CIFAR-10 (a different, longer-trained model and other OOD sets: a reference, not a
like-for-like comparison). ECE before and after temperature scaling comes from each run's results.json.
Then `vitkit predict --reject-unknown` on 200 posters with the flowers model (share rejected) and on its
validation photos (share kept), and a small plain ViT trained on the same CIFAR-10 images, calibrated,
exported with `vitkit export --format hf`: the largest difference between transformers' pipeline scores
and vitkit's calibrated ones on 200 held-out CIFAR-10 images.

    python benchmarks/ood.py --cifar-minutes 12 --flowers-minutes 5
    python benchmarks/ood.py --cifar-run runs/cifar --flowers-run runs/flowers   # score existing runs
    python benchmarks/ood.py --flowers-preset hf-vit-finetune   # a pretrained flowers model (downloads)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from common import REPO, SHARED_DATA, machine, print_table, project_path, write_json

POSTERS = SHARED_DATA / "movie-posters" / "Images"
FLOWERS = SHARED_DATA / "flowers-mini"
CIFAR10 = SHARED_DATA / "cifar10-train"
CIFAR100_TEST = SHARED_DATA / "cifar100-dev" / "data" / "test-00000-of-00001.parquet"
FASHION_DIRS = [Path("/usr/share/datasets/fashion-mnist"), SHARED_DATA]
PARITY_MODEL = ["stem=patch", "class_token=true", "pool=cls", "patch_size=4"]  # transformers' ViT layout
REJECT_POSTERS = 200
FLOWERS_BATCH = 64

# OpenOOD v1.5 (Zhang et al., 2023, arXiv:2306.09301), CIFAR-10, ResNet-18 trained 100 epochs, post-hoc methods,
# mean of 3 checkpoints: near-OOD = CIFAR-100 + TinyImageNet, far-OOD = MNIST + SVHN + Textures + Places365.
OPENOOD_V15_CIFAR10 = {
    "msp": {"near_auroc": 88.03, "far_auroc": 90.73, "near_fpr95": 48.17, "far_fpr95": 31.71},
    "energy": {"near_auroc": 87.58, "far_auroc": 91.21, "near_fpr95": 61.34, "far_fpr95": 41.71},
    "knn": {"near_auroc": 90.64, "far_auroc": 92.96, "near_fpr95": 34.00, "far_fpr95": 24.28},
    "vim": {"near_auroc": 88.68, "far_auroc": 93.48, "near_fpr95": None, "far_fpr95": None},
}


def vitkit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vitkit", *args]


def held_out_cifar10(folder: Path, per_class: int = 0) -> Path:
    """CIFAR-10's training images (the first `per_class` of each class when given) as train/ and test/ class
    folders of links: every tenth file of each class (sorted by name) in test/."""
    for name in sorted(os.listdir(CIFAR10)):
        names = sorted(os.listdir(CIFAR10 / name))
        for i, file in enumerate(names[:per_class] if per_class else names):
            link = folder / ("test" if i % 10 == 0 else "train") / name / file
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(CIFAR10 / name / file)
    return folder


def train(preset: str, data: Path, minutes: float, out: Path, extra: list[str] = ()) -> Path:
    if not (out / "results.json").is_file():
        command = ["train", "--preset", preset, "--data", str(data), "--time-budget", f"{minutes:g}"]
        subprocess.run(vitkit_command(*command, "--out", str(out), "--no-progress", *extra), check=True, cwd=REPO)
    return out


def fashion_images(limit: int):
    from PIL import Image

    from vitkit.data.builtin import read_idx

    for folder in FASHION_DIRS:
        path = folder / "t10k-images-idx3-ubyte.gz"
        if path.is_file():
            return [Image.fromarray(a) for a in read_idx(path)[:limit]]
    return None


def cifar100_images(limit: int):
    import pyarrow.parquet as pq
    from PIL import Image

    rows = pq.read_table(CIFAR100_TEST, columns=["img"]).column("img").to_pylist()[:limit]
    return [Image.open(io.BytesIO(row["bytes"])) for row in rows]


def files(folder: Path, limit: int = 0) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return found[:limit] if limit else found


def method_scores(clf, images) -> dict[str, torch.Tensor]:
    """Each method's score of every image (paths or PIL images), as `--reject-unknown` computes it: the
    classifier's own scoring (calibrated logits, the checkpoint's training-feature bank for knn, and the
    mirror with each image where the checkpoint says so)."""
    from vitkit.eval.ood import METHODS

    pre = clf.preprocessing
    batches = [
        torch.stack([pre.load_tensor(x) if isinstance(x, Path) else pre.image_tensor(x) for x in images[i : i + 256]])
        for i in range(0, len(images), 256)
    ]
    scores = {}
    for method in METHODS:
        clf.reject_unknown(method)
        scores[method] = torch.cat([clf.outputs_tensor(batch)[:, -1] for batch in batches])
    clf.rejection = None
    return scores


def separation_table(clf, inside: list, outside: dict[str, list], groups: dict[str, list[str]]) -> dict:
    """Per OOD set and group (mean over its sets), per method: AUROC and FPR@95TPR against `inside`."""
    from vitkit.eval.ood import separation

    in_scores = method_scores(clf, inside)
    per_set = {}
    for name, images in outside.items():
        scores = method_scores(clf, images)
        per_set[name] = {"images": len(images)} | {m: separation(in_scores[m], scores[m]) for m in scores}
    grouped = {}
    for group, names in groups.items():
        names = [n for n in names if n in per_set]
        if names:
            grouped[group] = {
                m: {k: sum(per_set[n][m][k] for n in names) / len(names) for k in ("auroc", "fpr95")}
                for m in in_scores
            } | {"sets": names}
    mirror = bool(clf.meta["ood"].get("mirror"))  # scores read each image with its mirror
    return {"in_distribution_images": len(inside), "mirror": mirror, "sets": per_set, "groups": grouped}


def rejection_check(run: Path, posters: list[Path], kept_folder: Path) -> dict:
    """`vitkit predict --reject-unknown` with each method: the share of `posters` answered unknown, and of
    the flowers validation photos kept; the top-level figures are the default method's."""
    from vitkit.eval.ood import DEFAULT_METHOD, METHODS

    def unknown_shares(method: str) -> tuple[float, float]:
        """Posters and validation photos in one command per method (each command loads the model once)."""
        flags = ("--reject-unknown", "--unknown-method", method, "--format", "json")
        proc = subprocess.run(
            vitkit_command("predict", str(run), *map(str, [*posters, *val]), *flags),
            check=True, capture_output=True, text=True, cwd=REPO,
        )  # fmt: skip
        unknown = [r["unknown"] for r in json.loads(proc.stdout)["results"]]
        assert len(unknown) == len(posters) + len(val)
        return sum(unknown[: len(posters)]) / len(posters), sum(unknown[len(posters) :]) / len(val)

    val = files(kept_folder)
    per_method = {}
    for m in METHODS:
        rejected, val_unknown = unknown_shares(m)
        per_method[m] = {"posters_rejected": rejected, "validation_kept": 1 - val_unknown}
    return {
        "command": f"vitkit predict RUN <{len(posters)} posters> --reject-unknown --unknown-method METHOD "
        "--format json",
        "posters": len(posters),
        "validation_photos": len(val),
        "method": DEFAULT_METHOD,
        **per_method[DEFAULT_METHOD],
        "per_method": per_method,
    }


def hf_parity(run: Path, export: Path, images: list[Path]) -> dict:
    """The largest |pipeline score - vitkit score| over every class of every image."""
    from PIL import Image
    from transformers import pipeline

    import vitkit

    subprocess.run(vitkit_command("export", str(run), str(export), "--format", "hf"), check=True, cwd=REPO)
    clf = vitkit.load(run, backend="torch", precision="fp32")
    hf = pipeline("image-classification", model=str(export), device="cpu")
    worst = 0.0
    for start in range(0, len(images), 64):
        chunk = images[start : start + 64]
        ours = clf.predict_tensor(torch.stack([clf.preprocessing.load_tensor(p) for p in chunk])).tolist()
        theirs = hf([Image.open(p) for p in chunk], top_k=len(clf.class_names))
        for row, other in zip(ours, theirs):
            scores = {p["label"]: p["score"] for p in other}
            worst = max(worst, *(abs(s - scores[n]) for n, s in zip(clf.class_names, row)))
    return {"images": len(images), "temperature": clf.temperature, "max_abs_score_diff": worst}


def trained_as(run: Path) -> dict:
    """The recipe and --time-budget a run records (a run given with --cifar-run or --flowers-run too)."""
    trained = json.loads((run / "best" / "config.json").read_text())["train_config"]
    return {"preset": trained.get("preset"), "minutes": trained.get("time_budget"), "run": project_path(str(run))}


def calibration_of(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    report = results["calibration"]
    return {
        "top1": results["metrics"]["top1"],
        "split": report["split"],
        "temperature": report["temperature"],
        "before": report["before"],
        "after": report["after"],
    }


def rows_of(model: str, table: dict) -> list[dict]:
    rows = []
    for group, methods in table["groups"].items():
        for method in ("msp", "energy", "knn"):
            published = OPENOOD_V15_CIFAR10.get(method, {}) if model == "cifar10" else {}
            openood = {k: v / 100 for k, v in published.items() if v is not None}
            rows.append(
                {
                    "model": model,
                    "ood": group,
                    "method": method,
                    "auroc": methods[method]["auroc"],
                    "fpr95": methods[method]["fpr95"],
                    "openood_auroc": openood.get(f"{group}_auroc"),
                    "openood_fpr95": openood.get(f"{group}_fpr95"),
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar-minutes", type=float, default=12.0, help="--time-budget of the CIFAR-10 model")
    parser.add_argument("--flowers-minutes", type=float, default=5.0, help="--time-budget of the flowers model")
    parser.add_argument(
        "--flowers-preset", default="cifar-fast",
        help="the flowers model's recipe, e.g. hf-vit-finetune (downloads its pretrained ViT) for the poster check",
    )  # fmt: skip
    parser.add_argument("--parity-minutes", type=float, default=2.0, help="--time-budget of the HF export check's ViT")
    parser.add_argument("--cifar-run", type=Path, help="score this CIFAR-10 run (trained on --work's split)")
    parser.add_argument("--flowers-run", type=Path, help="score this flowers-mini run instead of training one")
    parser.add_argument("--limit", type=int, default=2000, help="images per OOD set at most")
    parser.add_argument("--per-class", type=int, default=0, help="CIFAR-10 images per class (0: all 5,000)")
    parser.add_argument("--no-parity", action="store_true", help="leave out the transformers pipeline check")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "ood-benchmark", help="split and run folders")
    parser.add_argument("--out", default="benchmarks/results/ood.json")
    args = parser.parse_args()
    import vitkit

    cifar = held_out_cifar10(args.work / "cifar10-heldout", args.per_class)
    # a few images per class are fewer than the recipes' batches
    limit = ["--batch-size", str(FLOWERS_BATCH)] if args.per_class else []
    cifar_run = args.cifar_run or train("cifar-fast", cifar, args.cifar_minutes, args.work / "cifar", limit)
    # flowers-mini's 300 training photos are fewer than cifar-fast's batch of 1024
    from vitkit.models import PRESETS

    batch = min(PRESETS[args.flowers_preset].train.get("batch_size", FLOWERS_BATCH), FLOWERS_BATCH)
    flowers_run = args.flowers_run or train(
        args.flowers_preset, FLOWERS, args.flowers_minutes, args.work / "flowers", ["--batch-size", str(batch)]
    )

    fashion = fashion_images(args.limit)
    posters = files(POSTERS, args.limit)
    cifar_test = files(cifar / "test")
    outside = {"cifar100": cifar100_images(args.limit), "posters": posters, "flowers": files(FLOWERS)}
    if fashion is not None:
        outside["fashion_mnist"] = fashion
    groups = {"near": ["cifar100"], "far": ["posters", "fashion_mnist", "flowers"]}
    clf = vitkit.load(cifar_run, device="cpu", backend="torch", precision="fp32")
    cifar_table = separation_table(clf, cifar_test, outside, groups)

    outside = {"cifar10": cifar_test[: args.limit], "posters": posters}
    if fashion is not None:
        outside["fashion_mnist"] = fashion
    clf = vitkit.load(flowers_run, device="cpu", backend="torch", precision="fp32")
    flowers_table = separation_table(clf, files(FLOWERS / "val"), outside, {"far": list(outside)})
    rejection = rejection_check(flowers_run, posters[:REJECT_POSTERS], FLOWERS / "val")

    parity = None
    if not args.no_parity:
        overrides = [a for pair in PARITY_MODEL for a in ("--model-arg", pair)]
        parity_run = train("cifar-hybrid", cifar, args.parity_minutes, args.work / "parity-vit", overrides + limit)
        parity = hf_parity(parity_run, args.work / "parity-vit-hf", cifar_test[:200])

    rows = rows_of("cifar10", cifar_table) + rows_of("flowers", flowers_table)
    print("\nAUROC and FPR@95TPR per method (OpenOOD v1.5 ResNet-18 CIFAR-10 published numbers beside)")
    print_table(
        rows,
        [
            ("model", "model", ""),
            ("ood", "OOD", ""),
            ("method", "method", ""),
            ("auroc", "AUROC", ".4f"),
            ("fpr95", "FPR@95", ".4f"),
            ("openood_auroc", "OpenOOD AUROC", ".4f"),
            ("openood_fpr95", "OpenOOD FPR@95", ".4f"),
        ],
    )
    calibration = {"cifar10": calibration_of(cifar_run), "flowers": calibration_of(flowers_run)}
    for name, c in calibration.items():
        print(
            f"{name}: top-1 {c['top1']:.4f}; {c['split']} ECE {c['before']['ece']:.4f} -> {c['after']['ece']:.4f} "
            f"(T = {c['temperature']:.3f}), NLL {c['before']['nll']:.4f} -> {c['after']['nll']:.4f}"
        )
    print(f"--reject-unknown, flowers model: {json.dumps(rejection)}")
    if parity:
        print(f"transformers pipeline against vitkit's calibrated scores: {json.dumps(parity)}")
    write_json(
        REPO / args.out,
        {
            "benchmark": "calibration and unknown-input rejection",
            "command": "python benchmarks/ood.py " + " ".join(project_path(a) for a in sys.argv[1:]),
            "machine": machine(),
            "models": {"cifar10": trained_as(cifar_run), "flowers": trained_as(flowers_run)},
            "calibration": calibration,
            "rows": rows,
            "cifar10": cifar_table,
            "flowers": flowers_table,
            "flowers_in_distribution": "the validation photos, which also set the threshold and chose best/",
            "reject_unknown": rejection,
            "hf_pipeline_parity": parity,
            "published_reference": {
                "source": "OpenOOD v1.5 (Zhang et al., 2023, arXiv:2306.09301), CIFAR-10 ResNet-18 post-hoc results",
                "near_ood": "CIFAR-100, TinyImageNet",
                "far_ood": "MNIST, SVHN, Textures, Places365",
                "percent": OPENOOD_V15_CIFAR10,
                "missing": "ViM's FPR@95",
            },
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
