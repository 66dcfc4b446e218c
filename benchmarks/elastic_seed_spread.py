"""The seed spread that the elastic-training tests (tests/test_distributed.py) hold a restarted, shrunk or
resumed run to: the configuration of their runs (COMMON there: digits, vit_micro, 2 epochs, SGD, fp32, no
random augmentation) trained in one process with several seeds; the spread is the range of the final
test top-1 (and of the multi-label test's mAP, on its synthetic colour labels).

    python benchmarks/elastic_seed_spread.py [--seeds 5] [--out benchmarks/results/elastic_seed_spread.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import REPO, machine, write_json  # noqa: E402

import vitkit  # noqa: E402

# tests/test_distributed.py's COMMON, as options of vitkit.train
COMMON = dict(
    epochs=2, progress=False, plots=False, crop_padding=0, threads=1, batch_size=64, amp="off",
    optimizer="sgd", lr=0.05, warmup_epochs=0,
)  # fmt: skip


# and what its multi-label test changes
MULTI_LABEL = dict(batch_size=32, image_size=16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "elastic_seed_spread.json")
    args = parser.parse_args()
    from elastic_data import colour_labels  # noqa: PLC0415  (tests/: the multi-label test's data)

    top1, maps = [], []
    with tempfile.TemporaryDirectory() as work:
        data, table = colour_labels(Path(work) / "colours")
        for seed in range(args.seeds):
            result = vitkit.train(out=f"{work}/digits-{seed}", seed=seed, quiet=True, **COMMON)
            top1.append(result["metrics"]["top1"])
            result = vitkit.train(
                data=str(data), labels=str(table), out=f"{work}/colours-{seed}", seed=seed, quiet=True,
                **{**COMMON, **MULTI_LABEL},
            )
            maps.append(result["metrics"]["map_macro"])
    record = {
        "what": "final test top-1 (digits) and mAP (colour labels) of the elastic tests' configuration, one process",
        "command": "python benchmarks/elastic_seed_spread.py --seeds " + str(args.seeds),
        "machine": machine(),
        "seeds": list(range(args.seeds)),
        "digits_top1": top1,
        "digits_top1_spread": max(top1) - min(top1),
        "colours_map": maps,
        "colours_map_spread": max(maps) - min(maps),
    }
    write_json(args.out, record)
    print(record)


if __name__ == "__main__":
    main()
