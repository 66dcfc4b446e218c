"""vitkit's ViT against transformers' ViTForImageClassification: identical configuration and weights,
same batch, threads, optimizer (vitkit's AdamW, the same tensors decayed) and inputs; training and
inference images/s measured round-robin in one run. Compile time is reported apart from the step rate.

    python benchmarks/vs_transformers.py --model vit_tiny_patch16_224 --image-size 224 --batch-size 32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import hf_twin, machine, print_table, write_json

from vitkit.models import create_model
from vitkit.runtime import use_bf16
from vitkit.training.optim import build_optimizer, param_groups


def train_step(forward, optimizer, x, y, bf16: bool):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = forward(x)
    loss = F.cross_entropy(logits.float(), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def transformers_param_groups(model, weight_decay: float) -> list[dict]:
    """param_groups' split for transformers' ViT, which lacks vitkit's model contract: no weight decay for
    1-D tensors, the position embeddings and the class token, as vitkit's ViT names them."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(("position_embeddings", "cls_token")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def rate(fn, steps: int, batch: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps * batch / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row (compile time reported)")
    parser.add_argument("--json", default="benchmarks/results/vs_transformers.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    base = create_model(args.model, image_size=args.image_size, num_classes=100)
    hf = hf_twin(base, Path(tempfile.mkdtemp()) / "hf").train()
    default_bf16 = use_bf16("auto", torch.device("cpu"))
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    y = torch.randint(0, 100, (args.batch_size,))

    def vitkit_copy():
        model = create_model(args.model, image_size=args.image_size, num_classes=100)
        model.load_state_dict(base.state_dict())
        return model.train()

    paths = {
        "transformers (fp32, its default)": (lambda m: lambda t: m(pixel_values=t).logits, hf, False),
        "vitkit fp32": (lambda m: m, vitkit_copy(), False),
    }
    if default_bf16:
        paths["vitkit default (bf16 autocast: native bf16 CPU)"] = (lambda m: m, vitkit_copy(), True)
    compile_s = None
    if args.compile:
        compiled_model = vitkit_copy()
        paths["vitkit compiled"] = (lambda m: torch.compile(m), compiled_model, default_bf16)

    rows, steps = {}, {}
    for name, (wrap, model, bf16) in paths.items():
        groups = transformers_param_groups(model, 0.05) if model is hf else param_groups(model, 0.05)
        optimizer = build_optimizer(model, "adamw", 1e-4, 0.05, 0.9, groups)
        forward = wrap(model)
        start = time.perf_counter()
        train_step(forward, optimizer, x, y, bf16)  # warm-up (compiles if asked)
        if name == "vitkit compiled":
            compile_s = time.perf_counter() - start
        steps[name] = (forward, optimizer, model, bf16)
        rows[name] = {"path": name, "train_ips": 0.0, "infer_ips": 0.0}
    for _ in range(args.rounds):
        for name, (forward, optimizer, model, bf16) in steps.items():
            print(f"  {name}", file=sys.stderr, flush=True)
            model.train()
            rows[name]["train_ips"] += (
                rate(lambda: train_step(forward, optimizer, x, y, bf16), args.steps, args.batch_size) / args.rounds
            )
            model.eval()
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                rows[name]["infer_ips"] += rate(lambda: forward(x), args.steps * 2, args.batch_size) / args.rounds
    ref = rows["transformers (fp32, its default)"]
    for row in rows.values():
        row["train_x"] = row["train_ips"] / ref["train_ips"]
        row["infer_x"] = row["infer_ips"] / ref["infer_ips"]
    table = list(rows.values())
    print(f"\n{args.model} @ {args.image_size}px, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print_table(
        table,
        [
            ("path", "path", "s"),
            ("train_ips", "train img/s", ".1f"),
            ("train_x", "x transformers", ".2f"),
            ("infer_ips", "infer img/s", ".1f"),
            ("infer_x", "x transformers", ".2f"),
        ],
    )
    if compile_s is not None:
        print(f"compile time (first step): {compile_s:.1f} s")
    write_json(
        args.json,
        {
            "machine": machine(),
            "model": args.model,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "compile_s": compile_s,
            "rows": table,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
