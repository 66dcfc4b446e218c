"""Inference speed on identical ViT weights: vitkit eager, vitkit compiled, vitkit on ONNX Runtime, and
Hugging Face transformers' ViTForImageClassification, all in one run on the same inputs.

Reports images/s at batch 32 and single-image latency (p50/p95), and checks that every path gives
the same logits as transformers.

    python benchmarks/inference.py --model vit_tiny_patch16_224 --batch-size 32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine, print_table, write_json

from vitkit.api import Classifier
from vitkit.export.onnx import OnnxModel, export_onnx
from vitkit.models import create_model
from vitkit.pretrained.hf import save_hf_folder


def hf_twin(model, folder: Path):
    """transformers' ViTForImageClassification holding exactly vitkit's weights (through the
    published checkpoint layout, as a user would load them)."""
    import transformers

    save_hf_folder(
        model, [str(i) for i in range(model.config.num_classes)], {"mean": [0.5] * 3, "std": [0.5] * 3}, folder
    )
    return transformers.ViTForImageClassification.from_pretrained(folder).eval()


def throughput(fn, x, seconds: float) -> float:
    fn(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(x)
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def latency(fn, x, repeats: int) -> tuple[float, float]:
    fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1000)
    q = statistics.quantiles(times, n=20)
    return statistics.median(times), q[18]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0, help="per path and measurement round")
    parser.add_argument("--rounds", type=int, default=2, help="paths are measured round-robin this many times")
    parser.add_argument("--latency-repeats", type=int, default=40)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--json", default="benchmarks/results/inference.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model(args.model).eval()
    tmp = Path(tempfile.mkdtemp())
    hf = hf_twin(model, tmp / "hf")
    meta = {
        "class_names": [str(i) for i in range(model.config.num_classes)],
        "preprocessing": {"image_size": model.config.image_size, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3},
    }
    print("exporting ONNX ...", file=sys.stderr)
    export_onnx(Classifier(model, meta, device="cpu"), tmp / "model.onnx")
    ort_model = OnnxModel(tmp / "model.onnx")

    x = torch.randn(args.batch_size, 3, model.config.image_size, model.config.image_size)
    with torch.inference_mode():
        reference = hf(pixel_values=x).logits
    paths = {
        "transformers eager": lambda t: hf(pixel_values=t).logits,
        "vitkit eager": model,
        "vitkit onnxruntime": ort_model,
    }
    compile_s = None
    if not args.no_compile:
        print("compiling ...", file=sys.stderr)
        compiled = torch.compile(model)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(x)
            compiled(x[:1])
        compile_s = time.perf_counter() - start
        paths["vitkit compiled"] = compiled

    rows = {name: {"path": name, "ips": 0.0} for name in paths}
    with torch.inference_mode():
        for name, fn in paths.items():
            rows[name]["max_abs_diff_vs_transformers"] = (fn(x) - reference).abs().max().item()
        for _ in range(args.rounds):  # round-robin so drift hits every path alike
            for name, fn in paths.items():
                rows[name]["ips"] += throughput(fn, x, args.seconds) / args.rounds
        for name, fn in paths.items():
            rows[name]["p50_ms"], rows[name]["p95_ms"] = latency(fn, x[:1], args.latency_repeats)
    base = rows["transformers eager"]["ips"]
    for row in rows.values():
        row["speedup_vs_transformers"] = row["ips"] / base
    table = list(rows.values())
    print(f"\n{args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print_table(
        table,
        [
            ("path", "path", "s"),
            ("ips", f"img/s @ {args.batch_size}", ".1f"),
            ("speedup_vs_transformers", "x transformers", ".2f"),
            ("p50_ms", "p50 ms (1 img)", ".1f"),
            ("p95_ms", "p95 ms (1 img)", ".1f"),
            ("max_abs_diff_vs_transformers", "max |dlogit|", ".1e"),
        ],
    )
    write_json(
        args.json,
        {
            "machine": machine(),
            "model": args.model,
            "batch_size": args.batch_size,
            "compile_s": compile_s,
            "rows": table,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
