"""Images/s of the data pipelines against the models' own training rate.

Pipelines, each alone (uint8 batches out of `BatchLoader`, nothing trained): the folder decoded in
memory, the folder streamed from its files with 1, 2 and the default number of decoding workers, and
the folder packed into parquet shards (`vitkit data pack`) streamed with the default workers. Then,
per model, training images/s on one fixed batch (the model alone) and with every batch taken from
the streamed folder and the in-memory folder (augmentation on the device as in `vitkit train`): the
gap between the two is what the pipeline costs the step.

    python benchmarks/data_pipeline.py
    python benchmarks/data_pipeline.py --images 2000 --train-steps 6
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import SHARED_DATA, machine, print_table, write_json

from vitkit.data.augment import one_hot_smooth
from vitkit.data.loader import AUTO_WORKERS, BatchLoader, auto_workers
from vitkit.data.pack import pack_folder
from vitkit.data.prepare import prepare_data
from vitkit.training.config import make_config
from vitkit.training.engine import Trainer

CASES = [  # (shared dataset, stored size, models compared)
    ("flowers-mini", 224, ["vit_small_patch16_224", "folder-vit"]),
    ("cifar10-dev", 32, ["vit_small_patch16_224", "folder-vit"]),
]


def pipeline_rate(split, batch: int, workers: int, images: int) -> float:
    """Images/s over at least `images` images (epoch after epoch), after the first batch (which
    starts the workers) and with the prefetched batches drained in the count."""
    loader = BatchLoader(split, batch, shuffle=True, drop_last=True, workers=workers)
    epoch, seen, start = 0, None, None
    while seen is None or seen < images:
        for _, labels in loader.batches(epoch):
            if start is None:
                start, seen = time.perf_counter(), 0
                continue
            seen += len(labels)
        epoch += 1
    return seen / (time.perf_counter() - start)


def training_rates(data: str, size: int, model: str, batch: int, steps: int) -> dict:
    """Training images/s of `model`: on one fixed batch, and fed by the streamed and the in-memory folder."""
    rates = {}
    for source, limit in (("streamed", 0.0), ("in_memory", None)):
        options = dict(data=data, image_size=size, batch_size=batch, memory_limit_gb=limit, progress=False)
        options["preset" if model.startswith("folder-") else "model"] = model
        trainer = Trainer(make_config(**options))
        net = trainer.model.train()
        batches = (b for epoch in range(10**6) for b in trainer.train_loader.batches(epoch))
        images, labels = next(batches)
        x, targets = trainer.augment.train(images, trainer.aug_gen), one_hot_smooth(labels, trainer.data.num_classes, 0)
        trainer.model_step(net, x, targets)  # warm-up
        if "model_only" not in rates:
            start = time.perf_counter()
            for _ in range(steps):
                trainer.model_step(net, x, targets)
            rates["model_only"] = steps * batch / (time.perf_counter() - start)
        trainer.train_step(net, *next(batches))
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(net, *next(batches))
        rates[source] = steps * batch / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1500, help="images per pipeline measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=4, help="timed training steps per model and source")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_pipeline.json"))
    args = parser.parse_args()
    torch.manual_seed(0)

    pipeline_rows, training_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, size, models in CASES:
            folder = SHARED_DATA / name
            memory, _ = prepare_data(str(folder), stored_size=size, seed=0, val_split=0.1)
            streamed, _ = prepare_data(str(folder), stored_size=size, seed=0, val_split=0.1, memory_limit_gb=0)
            packed_dir = Path(tmp) / name
            pack_folder(folder, packed_dir)
            packed, _ = prepare_data(str(packed_dir), stored_size=size, seed=0, val_split=0.1, memory_limit_gb=0)
            pipelines = [
                ("in-memory", memory.train, 0),
                ("folder, 1 worker", streamed.train, 1),
                ("folder, 2 workers", streamed.train, 2),
                (f"folder, default ({auto_workers()})", streamed.train, AUTO_WORKERS),
                (f"packed parquet, default ({auto_workers()})", packed.train, AUTO_WORKERS),
            ]
            for label, split, workers in pipelines:
                rate = pipeline_rate(split, args.batch_size, workers, args.images)
                pipeline_rows.append(dict(data=name, size=size, pipeline=label, images_per_s=rate))
                print(f"{name} {size}px {label}: {rate:.0f} img/s", flush=True)
            for model in models:
                rates = training_rates(str(folder), size, model, args.batch_size, args.train_steps)
                row = dict(data=name, size=size, model=model, **rates)
                row["streamed_cost"] = 1 - rates["streamed"] / rates["model_only"]
                row["in_memory_cost"] = 1 - rates["in_memory"] / rates["model_only"]
                folder_rate = next(
                    r["images_per_s"]
                    for r in pipeline_rows
                    if r["data"] == name and r["pipeline"].startswith("folder, default")
                )
                row["decoding_keeps_up"] = folder_rate >= rates["model_only"]
                training_rows.append(row)
                print(f"{name} {size}px {model}: {rates}", flush=True)

    print()
    print_table(
        pipeline_rows,
        [("data", "data", ""), ("size", "px", "d"), ("pipeline", "pipeline", ""), ("images_per_s", "img/s", ".0f")],
    )
    print()
    print_table(
        training_rows,
        [
            ("data", "data", ""),
            ("size", "px", "d"),
            ("model", "model", ""),
            ("model_only", "model img/s", ".1f"),
            ("streamed", "streamed img/s", ".1f"),
            ("streamed_cost", "streamed cost", ".1%"),
            ("in_memory", "in-memory img/s", ".1f"),
            ("in_memory_cost", "in-memory cost", ".1%"),
            ("decoding_keeps_up", "decoding keeps up", ""),
        ],
    )
    write_json(
        args.out,
        {
            "machine": machine(),
            "batch_size": args.batch_size,
            "pipelines": pipeline_rows,
            "training": training_rows,
        },
    )


if __name__ == "__main__":
    main()
