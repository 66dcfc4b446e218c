"""`vitkit check` on a planted copy of CIFAR-10: does it find what was planted, within its time budget?

The copy (a temporary folder; the source is never changed) holds out a seeded test split, then plants:
  - label errors: a seeded 5% of all images moved to another class, chosen at random;
  - leaks: 50 test images (--leaks) copied into train, each resized by +-10% and re-encoded at another JPEG quality;
  - broken files: a truncated JPEG, a zero-byte file, a text file named .jpg, a CMYK JPEG and a 16-bit PNG.
It reports label-error recall and precision (target: recall >= 0.7 at precision >= 0.7), the share of
planted duplicates found (target >= 95%), the pairs found that were not planted, split into those between
two unchanged source images (CIFAR-10 holds near-duplicates of its own; they are listed, by source path, to
look at) and false ones involving a planted file (target <= 5), and whether every broken file is named.

    python benchmarks/check.py --data ../shared/data/cifar10-train --minutes 15
    python benchmarks/check.py --data ../shared/data/cifar10-dev/train --minutes 4 --out check-dev.json
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SHARED_DATA, machine, print_table, project_path, write_json  # noqa: E402

BROKEN = ("truncated.jpg", "empty.jpg", "text.jpg", "cmyk.jpg", "deep.png")


def is_original(path: str) -> bool:
    """Whether a file of the planted copy is one of the source's images, unchanged."""
    name = path.rsplit("/", 1)[1]
    return not name.startswith("copy") and name not in BROKEN


def source_name(path: str) -> str:
    """The source image a planted copy's unchanged file came from: CLASS-NAME -> CLASS/NAME."""
    return path.rsplit("/", 1)[1].replace("-", "/", 1)


def plant(source: Path, dest: Path, seed: int, flip_share: float, leaks: int, test_share: float) -> dict:
    rng = np.random.default_rng(seed)
    classes = sorted(d.name for d in source.iterdir() if d.is_dir())
    files = [(c, p) for c in classes for p in sorted((source / c).glob("*.jpg"))]
    order = rng.permutation(len(files))
    test = set(order[: int(len(files) * test_share)].tolist())
    flipped_ix = set(rng.choice(len(files), int(len(files) * flip_share), replace=False).tolist())
    placed, flipped = {}, set()
    for i, (c, path) in enumerate(files):
        split = "test" if i in test else "train"
        label = c
        if i in flipped_ix:
            label = classes[(classes.index(c) + int(rng.integers(1, len(classes)))) % len(classes)]
        target = dest / split / label / f"{c}-{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        placed[i] = target
        if i in flipped_ix:
            flipped.add(target.relative_to(dest).as_posix())
    for split in ("train", "test"):  # every split needs every class folder
        for c in classes:
            (dest / split / c).mkdir(parents=True, exist_ok=True)
    sources = [i for i in sorted(test) if i not in flipped_ix]
    pairs = []
    for n, i in enumerate(rng.choice(sources, leaks, replace=False).tolist()):
        original = placed[i]
        image = Image.open(original).convert("RGB")
        scale = float(rng.choice([0.9, 1.1]))
        side = max(1, round(image.width * scale))
        copy = dest / "train" / original.parent.name / f"copy{n:03d}-{original.name}"
        image.resize((side, side), Image.Resampling.BICUBIC).save(copy, quality=int(rng.integers(60, 86)))
        pairs.append((original.relative_to(dest).as_posix(), copy.relative_to(dest).as_posix()))
    broken_dir = dest / "train" / classes[0]

    def picture() -> Image.Image:  # none of the data's pictures, so the broken files duplicate nothing in it
        pattern = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        return Image.fromarray(pattern).resize((32, 32), Image.Resampling.BICUBIC)

    some = picture()
    buffer = io.BytesIO()
    some.save(buffer, "JPEG", quality=90)
    (broken_dir / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (broken_dir / "empty.jpg").write_bytes(b"")
    (broken_dir / "text.jpg").write_text("not an image\n")
    picture().convert("CMYK").save(broken_dir / "cmyk.jpg", quality=90)
    grey = (np.asarray(picture().convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey).save(broken_dir / "deep.png")
    broken = [f"train/{classes[0]}/{name}" for name in BROKEN]
    return {"flipped": flipped, "pairs": pairs, "broken": broken, "images": len(files) + leaks + len(BROKEN)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA / "cifar10-train"), help="a folder of class folders")
    parser.add_argument("--minutes", type=float, default=15.0, help="vitkit check's --time-budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--leaks", type=int, default=50, help="test images copied into train, resized and re-encoded")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "check.json"), help="the JSON to write")
    args = parser.parse_args()

    import vitkit

    with tempfile.TemporaryDirectory(prefix="vitkit-check-bench-") as tmp:
        planted_dir = Path(tmp) / "planted"
        t0 = time.monotonic()
        planted = plant(Path(args.data), planted_dir, args.seed, 0.05, args.leaks, 0.1)
        plant_s = time.monotonic() - t0
        # what vitkit train's start-up check costs on these files: with no cache, then cached
        from vitkit.check import train_check

        files = {split: sorted((planted_dir / split).rglob("*.*")) for split in ("train", "test")}
        train_check_s = []
        for _ in range(2):
            t0 = time.monotonic()
            train_check_line = train_check(str(planted_dir), files, str(Path(tmp) / "cache"))
            train_check_s.append(round(time.monotonic() - t0, 2))
        started = time.monotonic()
        report = vitkit.check(
            str(planted_dir),
            out=str(Path(tmp) / "report"),
            time_budget=args.minutes,
            data_dir=str(Path(tmp) / "cache"),
            seed=args.seed,
            started=started,
        )
        check_s = time.monotonic() - started
        html_bytes = (Path(tmp) / "report" / "check.html").stat().st_size

        found_errors = {e["path"] for e in report["label_errors"]}
        flipped = planted["flipped"]
        hits = len(found_errors & flipped)
        recall = hits / max(len(flipped), 1)
        precision = hits / max(len(found_errors), 1)
        planted_pairs = {frozenset(p) for p in planted["pairs"]}
        found_pairs = [frozenset(i["path"] for i in d["images"]) for d in report["duplicates"]]
        pairs_found = len(planted_pairs & set(found_pairs))
        extra = [p for p in found_pairs if p not in planted_pairs]
        identical = sum(len({(planted_dir / path).read_bytes() for path in pair}) == 1 for pair in extra)
        # pairs of two unmodified source images were in the source data before anything was planted
        in_source = [sorted(source_name(path) for path in pair) for pair in extra if all(map(is_original, pair))]
        named = {f["path"] for f in report["files"]}
        broken_found = [path for path in planted["broken"] if path in named]
        kinds = {f["path"]: f["kind"] for f in report["files"]}

    result = {
        "data": project_path(args.data),
        "images": planted["images"],
        "minutes": args.minutes,
        "check_seconds": round(check_s, 1),
        "plant_seconds": round(plant_s, 1),
        "train_start_check_seconds": {"uncached": train_check_s[0], "cached": train_check_s[1]},
        # the planted copy's temporary folder, named as the usage line does: no path of this machine
        "train_start_check": [line.replace(str(planted_dir), "PLANTED") for line in train_check_line],
        "label_check": report["label_check"],
        "flipped": len(flipped),
        "flagged": len(found_errors),
        "label_error_recall": round(recall, 4),
        "label_error_precision": round(precision, 4),
        "planted_pairs": len(planted_pairs),
        "planted_pairs_found": pairs_found,
        "pairs_not_planted": len(extra),
        "pairs_not_planted_byte_identical": identical,
        "pairs_not_planted_in_source": len(in_source),
        "pairs_not_planted_false": len(extra) - len(in_source),
        "source_pairs": in_source,
        "broken_planted": len(planted["broken"]),
        "broken_found": len(broken_found),
        "broken_kinds": {path.rsplit("/", 1)[1]: kinds.get(path) for path in planted["broken"]},
        "file_findings": len(report["files"]),
        "html_bytes": html_bytes,
        "machine": machine(),
    }
    rows = [
        {"what": "label errors: recall", "value": recall, "target": ">= 0.70"},
        {"what": "label errors: precision", "value": precision, "target": ">= 0.70"},
        {"what": "planted duplicates found", "value": pairs_found / len(planted_pairs), "target": ">= 0.95"},
        {"what": "pairs not planted", "value": float(len(extra)), "target": ""},
        {"what": "  of which in the source data already", "value": float(len(in_source)), "target": ""},
        {"what": "  of which byte-identical", "value": float(identical), "target": ""},
        {"what": "  false (involving a planted file)", "value": float(len(extra) - len(in_source)), "target": "<= 5"},
        {"what": "broken files found", "value": len(broken_found) / len(planted["broken"]), "target": "1.00"},
        {"what": "check seconds", "value": check_s, "target": f"<= {args.minutes * 60:.0f}"},
        {"what": "train's start-up check, seconds (no cache)", "value": train_check_s[0], "target": ""},
        {"what": "train's start-up check, seconds (cached)", "value": train_check_s[1], "target": "a few"},
    ]
    print_table(rows, [("what", "measure", "s"), ("value", "value", ".3f"), ("target", "target", "s")])
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
