"""The seed presets against the Keras 3 reference implementation of the seeds, in one run, same data
(real CIFAR images), same batch size: training images/s after compilation.

vitkit is measured twice beside the one Keras measurement: with its defaults (bf16 autocast where the
CPU has native bf16) and in fp32 like Keras, so that the precision's gain is not read as the
implementation's.

The Keras side is the runnable peer in ../shared/peers/ (a separate virtual environment with keras
and jax; see its README). vitkit's side trains the preset end to end (in-memory loader and on-device
augmentation included) with its default settings.

    python benchmarks/vs_keras.py --keras-python PATH/TO/venv/bin/python --models vit mixer
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REPO, SHARED_DATA, machine, print_table, project_path, sync, write_json

from vitkit.training.budget import TimeBudget
from vitkit.training.build import Runtime
from vitkit.training.engine import Trainer
from vitkit.training.resolve import make_config

PEER = REPO.parent / "shared" / "peers" / "keras_seed_reference.py"
PRESETS = {
    "vit": "keras-vit-cifar100",
    "mixer": "keras-mixer-cifar100",
    "fnet": "keras-fnet-cifar100",
    "gmlp": "keras-gmlp-cifar100",
}


def write_npz(trainer: Trainer, path: Path) -> None:
    """The exact images vitkit trains on, in the peer's format (uint8 NHWC)."""
    train, test = trainer.data.train, trainer.setup.eval_loader.split
    np.savez(
        path,
        x_train=train.images.permute(0, 2, 3, 1).numpy(),
        y_train=train.labels.numpy(),
        x_test=test.images.permute(0, 2, 3, 1).numpy(),
        y_test=test.labels.numpy(),
    )


def vitkit_rate(trainer: Trainer, steps: int) -> tuple[float, float]:
    net = trainer.wrap_model()
    net.train()
    batches = trainer.train_loader.batches(0)
    start = time.perf_counter()
    trainer.train_step(net, *next(batches))
    first = time.perf_counter() - start
    done, start = 0, time.perf_counter()
    for _ in range(steps):
        try:
            images, labels = next(batches)
        except StopIteration:
            batches = trainer.train_loader.batches(1)
            images, labels = next(batches)
        trainer.train_step(net, images, labels)
        done += labels.shape[0]
    sync(trainer.device)
    return done / (time.perf_counter() - start), first


def keras_reference(args, trainer: Trainer, family: str) -> dict:
    """The peer's JSON summary (parameters, images/s) on the images `trainer` trains on."""
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "data.npz"
        write_npz(trainer, npz)
        print(f"{PRESETS[family]}: keras reference ...", file=sys.stderr, flush=True)
        env = dict(os.environ, KERAS_BACKEND="jax")
        proc = subprocess.run(
            [
                args.keras_python,
                str(PEER),
                str(npz),
                "--budget-s",
                str(args.keras_budget_s),
                "--model",
                family,
                "--batch",
                str(args.batch_size),
                "--eval-limit",
                "512",
            ],
            capture_output=True,
            text=True,
            env=env,
        )
    if proc.returncode != 0:
        raise SystemExit(f"the Keras reference failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--keras-python",
        default=os.environ.get("KERAS_PYTHON"),
        help="python of the keras+jax environment (or $KERAS_PYTHON)",
    )
    parser.add_argument("--models", nargs="*", default=["vit"], choices=list(PRESETS))
    parser.add_argument("--data", default=str(SHARED_DATA / "cifar10-dev"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8, help="timed vitkit steps")
    parser.add_argument("--keras-budget-s", type=float, default=300)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile (its time is reported apart, as the Keras rate excludes XLA compilation)",
    )
    parser.add_argument(
        "--skip-keras", action="store_true", help="measure vitkit's side alone (no Keras environment needed)"
    )
    parser.add_argument("--json", default="benchmarks/results/vs_keras.json")
    args = parser.parse_args()
    if not args.keras_python and not args.skip_keras:
        parser.error("--keras-python (or $KERAS_PYTHON) is required, or --skip-keras")
    rows = []
    for family in args.models:
        preset = PRESETS[family]

        def trainer_with(amp: str) -> Trainer:
            options = dict(data=args.data, batch_size=args.batch_size, progress=False, val_split=0.1)
            cfg = make_config(preset=preset, amp=amp, compile=args.compile, **options)
            return Trainer(cfg, Runtime.create(cfg), TimeBudget(cfg.time_budget))

        trainer = trainer_with("auto")
        keras = None if args.skip_keras else keras_reference(args, trainer, family)
        print(f"{preset}: vitkit, default and fp32 ...", file=sys.stderr, flush=True)
        ips, first = vitkit_rate(trainer, args.steps)
        fp32_ips, _ = vitkit_rate(trainer_with("off"), args.steps)
        keras_ips = keras["img_per_s"] if keras else None
        rows.append(
            {
                "preset": preset,
                "vitkit_params": sum(p.numel() for p in trainer.model.parameters()),
                "keras_params": keras["params"] if keras else None,
                "keras_ips": keras_ips,
                "vitkit_ips": ips,
                "speedup": ips / keras_ips if keras_ips else None,
                "vitkit_fp32_ips": fp32_ips,
                "fp32_speedup": fp32_ips / keras_ips if keras_ips else None,
                "vitkit_first_step_s": first,
                "vitkit_bf16": trainer.bf16,
                "batch": args.batch_size,
            }
        )
    print_table(
        rows,
        [
            ("preset", "preset", "s"),
            ("keras_params", "Keras params", "d"),
            ("vitkit_params", "vitkit params", "d"),
            ("keras_ips", "Keras+JAX img/s", ".1f"),
            ("vitkit_ips", "vitkit img/s (default)", ".1f"),
            ("speedup", "x Keras", ".1f"),
            ("vitkit_fp32_ips", "vitkit img/s (fp32)", ".1f"),
            ("fp32_speedup", "x Keras (fp32)", ".1f"),
        ],
    )
    write_json(
        args.json, {"machine": machine(), "data": project_path(args.data), "compile": args.compile, "rows": rows}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
