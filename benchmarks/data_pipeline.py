"""Images/s of the data pipelines against the models' own training rate.

Pipelines, each alone (uint8 batches out of `BatchLoader`, nothing trained): the folder decoded in
memory, the folder streamed from its files with 1, 2 and the default number of decoding workers, and
the folder packed into parquet shards (`vitkit data pack`) streamed with the default workers. Then,
per model, training images/s on one fixed batch (the model alone) and with every batch taken from
the streamed folder and the in-memory folder (augmentation on the device as in `vitkit train`): the
gap between the two is what the pipeline costs the step.

    python benchmarks/data_pipeline.py
    python benchmarks/data_pipeline.py --data cifar10-dev --images 2000 --rounds 5
    python benchmarks/data_pipeline.py --data path/to/class-folders --image-size 64 --models folder-cct
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import SHARED_DATA, machine, print_table, project_path, write_json

from vitkit.data.augment import one_hot_smooth
from vitkit.data.loader import AUTO_WORKERS, BatchLoader, auto_workers
from vitkit.data.pack import pack_folder
from vitkit.data.prepare import DataOptions, prepare_data
from vitkit.data.preprocess import Preprocessing
from vitkit.training.budget import TimeBudget
from vitkit.training.build import Runtime
from vitkit.training.engine import Trainer
from vitkit.training.resolve import make_config

CASES = [  # (shared dataset, stored size, models compared)
    ("flowers-mini", 224, ["vit_small_patch16_224", "folder-cct"]),
    ("cifar10-dev", 32, ["vit_small_patch16_224", "folder-cct"]),
]


def pipeline_rate(split, batch: int, workers: int, images: int) -> float:
    """Images/s over at least `images` images (epoch after epoch), after the first batch (which
    starts the workers) and with the prefetched batches drained in the count. With one torch thread:
    indexing a batch in memory is too small a task for intra-op threads, and on a loaded machine their
    hand-offs made it 35x slower (2 threads, 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _pipeline_rate(split, batch, workers, images)
    finally:
        torch.set_num_threads(threads)


def _pipeline_rate(split, batch: int, workers: int, images: int) -> float:
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


def training_rates(data: str, size: int, model: str, batch: int, steps: int, rounds: int) -> dict:
    """Training images/s of `model`: on one fixed batch (the model alone), and fed by the streamed and
    by the in-memory folder. The three kinds of step alternate in rounds, so that drift in a shared
    machine's load affects them alike."""
    feeds, fixed = {}, None
    for source, limit in (("streamed", 0.0), ("in_memory", None)):
        options = dict(data=data, image_size=size, batch_size=batch, memory_limit_gb=limit, progress=False)
        options["preset" if model.startswith("folder-") else "model"] = model
        cfg = make_config(**options)
        trainer = Trainer(cfg, Runtime.create(cfg), TimeBudget(cfg.time_budget))
        batches = (b for epoch in range(10**6) for b in trainer.train_loader.batches(epoch))
        feeds[source] = trainer, batches
        if fixed is None:
            images, labels = next(batches)
            fixed = (
                trainer.augment.for_training(images, trainer.aug_gen),
                one_hot_smooth(labels, trainer.data.num_classes, 0),
            )
    model_trainer = feeds["streamed"][0]
    steps_of = {
        "model_only": lambda: model_trainer.model_step(model_trainer.model, *fixed),
        **{
            source: (lambda t=trainer, b=batches: t.train_step(t.model, *next(b)))
            for source, (trainer, batches) in feeds.items()
        },
    }
    for trainer, _ in feeds.values():
        trainer.model.train()
    for step in steps_of.values():  # warm-up
        step()
    seconds = dict.fromkeys(steps_of, 0.0)
    for _ in range(rounds):
        for kind, step in steps_of.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            seconds[kind] += time.perf_counter() - start
    return {kind: rounds * steps * batch / s for kind, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1500, help="images per pipeline measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=2, help="timed training steps per round, model and source")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--data",
        nargs="+",
        default=[name for name, _, _ in CASES],
        help="datasets of CASES to run, or class folders of your own (measured at --image-size)",
    )
    parser.add_argument("--image-size", type=int, default=32, help="stored size of a --data folder not in CASES")
    parser.add_argument("--models", nargs="+", help="models to train (default: each case's own)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_pipeline.json"))
    args = parser.parse_args()
    torch.manual_seed(0)

    known = {name: (SHARED_DATA / name, size, models) for name, size, models in CASES}
    names = [data if data in known else project_path(data) for data in args.data]
    pipeline_rows, training_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (data, name) in enumerate(zip(args.data, names)):
            folder, size, models = known.get(data, (Path(data), args.image_size, ["folder-cct"]))
            models = args.models or models
            memory, _ = prepare_data(DataOptions(str(folder)), Preprocessing(size))
            streamed, _ = prepare_data(DataOptions(str(folder), memory_limit_gb=0), Preprocessing(size))
            packed_dir = Path(tmp) / str(index)
            pack_folder(folder, packed_dir)
            packed, _ = prepare_data(DataOptions(str(packed_dir), memory_limit_gb=0), Preprocessing(size))
            pipelines = [
                ("in-memory", memory.train, 0),
                ("folder, 1 worker", streamed.train, 1),
                ("folder, 2 workers", streamed.train, 2),
                (f"folder, default ({auto_workers()})", streamed.train, AUTO_WORKERS),
                (f"packed parquet, default ({auto_workers()})", packed.train, AUTO_WORKERS),
            ]
            for label, split, workers in pipelines:
                rate = pipeline_rate(split, args.batch_size, workers, args.images)
                pipeline_rows.append(
                    dict(data=name, size=size, batch=args.batch_size, pipeline=label, images_per_s=rate)
                )
                print(f"{name} {size}px {label}: {rate:.0f} img/s", flush=True)
            for model in models:
                rates = training_rates(str(folder), size, model, args.batch_size, args.train_steps, args.rounds)
                row = dict(
                    data=name,
                    size=size,
                    batch=args.batch_size,
                    steps=args.rounds * args.train_steps,
                    model=model,
                    **rates,
                )
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

    out = Path(args.out)
    if out.is_file():  # the datasets not run this time keep their saved rows
        saved = json.loads(out.read_text())
        pipeline_rows = [r for r in saved["pipelines"] if r["data"] not in names] + pipeline_rows
        training_rows = [r for r in saved["training"] if r["data"] not in names] + training_rows
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
            "pipelines": pipeline_rows,
            "training": training_rows,
        },
    )


if __name__ == "__main__":
    main()
