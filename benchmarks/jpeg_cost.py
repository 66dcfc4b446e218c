"""What JPEG costs a recipe at 32 px: the same CIFAR images trained and evaluated as lossless PNG files and as
JPEG files at the quality of the shared CIFAR-10 copy (libjpeg quality 75, 4:2:0 chroma subsampling, as its
quantisation tables and sampling show), epoch for epoch with recipe_parity.py's per-epoch held-out rows.

The shared CIFAR-10 exists only as such JPEGs, so a recipe matched to a source that trains on the original
pixels (airbench94) is compared with it through this cost: CIFAR-100 (`cifar100-dev`, PNG in parquet, the
only lossless CIFAR here) is written out twice, once per format, with the same file order, so the two runs
differ in the pixels alone (same seed, same split, same schedule).

    python benchmarks/jpeg_cost.py                        # cifar-fast, 10 epochs
    python benchmarks/jpeg_cost.py --set "model_args={'widths': [64, 256, 256]}"
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from common import SHARED_DATA, parse_overrides, print_table, project_path, write_json
from PIL import Image
from recipe_parity import machine_record, run_row, slug

QUALITY = 75  # the shared CIFAR-10's: its luminance table is libjpeg's at 75
FORMATS = {"png": dict(format="PNG"), f"jpeg{QUALITY}": dict(format="JPEG", quality=QUALITY, subsampling="4:2:0")}


def write_folders(parquet_dir: Path, dest: Path, classes: int | None, per_class: int | None) -> dict[str, Path]:
    """The parquet shards (Hugging Face layout: `img` bytes, `fine_label`) as split/class/NNNNN files, once
    per format in FORMATS, the first `classes` classes and `per_class` images of each per split only when
    given; returns {format: folder}."""
    roots = {name: dest / name for name in FORMATS}
    for split in ("train", "test"):
        shards = sorted(parquet_dir.glob(f"{split}-*.parquet"))
        if not shards:
            raise SystemExit(f"--data {parquet_dir}: no {split}-*.parquet shards")
        index, written = 0, Counter()
        for shard in shards:
            table = pq.read_table(shard)
            names = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["fine_label"]["names"]
            for image, label in zip(table.column("img").to_pylist(), table.column("fine_label").to_pylist()):
                if (classes and label >= classes) or (per_class and written[label] >= per_class):
                    continue
                written[label] += 1
                pixels = Image.open(io.BytesIO(image["bytes"])).convert("RGB")
                for name, how in FORMATS.items():
                    folder = roots[name] / split / names[label]
                    folder.mkdir(parents=True, exist_ok=True)
                    pixels.save(folder / f"{index:05d}.{'png' if how['format'] == 'PNG' else 'jpg'}", **how)
                index += 1
    return roots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="cifar-fast")
    parser.add_argument("--data", default=str(SHARED_DATA / "cifar100-dev" / "data"), help="parquet shards")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="training overrides")
    parser.add_argument("--classes", type=int, help="the first N classes only (a quick try)")
    parser.add_argument("--per-class", type=int, help="N images of each class per split at most (a quick try)")
    parser.add_argument("--out", default="benchmarks/results/jpeg_cost")
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    machine_info = machine_record()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="vitkit-jpeg-cost-") as tmp:
        folders = write_folders(Path(args.data), Path(tmp), args.classes, args.per_class)
        for name, folder in folders.items():
            run_args = argparse.Namespace(data=str(folder), epochs=args.epochs, seed=args.seed)
            label = f"{args.recipe} on {name}" + "".join(f" {k}={v}" for k, v in overrides.items())
            rows[name] = run_row(label, args.recipe, run_args, overrides, False, machine_info)
            rows[name]["data"] = f"{project_path(args.data)} written as {name} files"
    png, jpeg = rows["png"], rows[f"jpeg{QUALITY}"]
    result = {
        "benchmark": "the cost of JPEG (quality 75, 4:2:0) to a recipe at 32 px",
        "recipe": args.recipe,
        "overrides": overrides,
        "epochs": args.epochs,
        "seed": args.seed,
        "cost_top1": png["test_top1"] - jpeg["test_top1"],
        "cost_tta_top1": png["tta_top1"] - jpeg["tta_top1"],
        "rows": rows,
        "machine": machine_info,
    }
    name = slug(f"jpeg-cost-{args.recipe}" + "".join(f"-{k}-{v}" for k, v in overrides.items()))
    write_json(Path(args.out) / f"{name}-{args.epochs}ep-seed{args.seed}-{machine_info['flags_class']}.json", result)
    print_table(
        [dict(r, format=k) for k, r in rows.items()],
        [("format", "files", "s"), ("test_top1", "top-1", ".4f"), ("tta_top1", "multi-crop TTA", ".4f"),
         ("train_time_s", "train s", ".0f")],
    )  # fmt: skip
    print(f"JPEG costs {result['cost_top1']:+.4f} top-1, {result['cost_tta_top1']:+.4f} with multi-crop TTA")
    return 0


if __name__ == "__main__":
    sys.exit(main())
