"""Training and inference images/s per preset: model-only and end-to-end on real images.

Model-only steps reuse one already-normalised batch (fed channels-last as `vitkit train` does, and
once more in NCHW for the channels-last gain); end-to-end steps take uint8 batches from the
in-memory loader and augment them on the device exactly as `vitkit train` does. The two kinds of step
are interleaved in rounds so that machine drift affects both alike; the gap is the data pipeline's cost.

The share of peak is the model-only training rate times the model's training FLOPs per image (matmuls
and convolutions of one forward and backward, counted by torch's FlopCounterMode) over the rate of a
large matrix product in the same precision on the same threads: what this machine can do at best.

    python benchmarks/throughput.py                       # every preset, its own batch size
    python benchmarks/throughput.py --batch-size 64 --models vit_tiny_patch4_32 resnet18_cifar
    python benchmarks/throughput.py --presets cifar-hybrid --profile   # where a step's time goes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from common import SHARED_DATA, machine, merge_rows, print_table, project_path, timed, write_json
from torch.utils.flop_counter import FlopCounterMode

from vitkit.data.augment import one_hot_smooth
from vitkit.models import PRESETS, count_parameters
from vitkit.training.budget import TimeBudget
from vitkit.training.build import Runtime
from vitkit.training.engine import Trainer
from vitkit.training.resolve import make_config


def build_trainer(
    name: str,
    data: str,
    batch_size: int | None,
    device: str,
    compile_model: bool,
    amp: str = "off",
    image_size: int | None = None,
) -> Trainer:
    options = dict(
        data=data, progress=False, device=device, compile=compile_model, train_limit=2000, test_limit=100, amp=amp
    )
    options["preset" if name in PRESETS else "model"] = name
    if batch_size:
        options["batch_size"] = batch_size
    if image_size:
        options["image_size"] = image_size
    cfg = make_config(**options)
    trainer = Trainer(cfg, Runtime.create(cfg), TimeBudget(cfg.time_budget))
    return trainer


def matmul_peak_gflops(device: torch.device, bf16: bool, size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a large square matrix product: the practical peak of this device and precision."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up
    seconds = timed(lambda: [a @ b for _ in range(repeats)], device)
    return 2 * size**3 * repeats / seconds / 1e9


def train_gflop_per_image(trainer: Trainer, net, x: torch.Tensor, targets: torch.Tensor) -> float:
    """Matmul and convolution GFLOPs of one training step (forward and backward), per image."""
    with FlopCounterMode(display=False) as counter:
        trainer.model_step(net, x, targets)
    return counter.get_total_flops() / x.shape[0] / 1e9


def measure(
    name: str,
    data: str,
    batch_size: int | None,
    rounds: int,
    steps: int,
    device: str,
    compile_model: bool,
    amp: str = "off",
    image_size: int | None = None,
    peak_size: int = 2048,
) -> dict:
    trainer = build_trainer(name, data, batch_size, device, compile_model, amp, image_size)
    net = trainer.wrap_model()
    device = trainer.device
    batch = trainer.cfg.batch_size
    images, labels = next(trainer.train_loader.batches(0))
    x = trainer.augment.for_inference(images)
    targets = one_hot_smooth(labels, trainer.data.num_classes, 0.0)
    stream = iter(())

    def model_only():
        for _ in range(steps):
            trainer.model_step(net, x, targets)

    def model_only_nchw():
        trainer.cfg.channels_last = False
        model_only()
        trainer.cfg.channels_last = True

    def end_to_end():
        nonlocal stream
        for _ in range(steps):
            try:
                imgs, labs = next(stream)
            except StopIteration:
                stream = trainer.train_loader.batches(trainer.state.step)
                imgs, labs = next(stream)
            trainer.train_step(net, imgs, labs)

    def inference():
        with torch.inference_mode(), torch.autocast(trainer.device.type, torch.bfloat16, enabled=trainer.bf16):
            for _ in range(steps):
                trainer.model(x)

    net.train()
    compile_s = timed(lambda: trainer.model_step(net, x, targets), device)  # first step (compiles if asked)
    model_only(), end_to_end()  # warm-up
    t_model = t_nchw = t_e2e = t_infer = 0.0
    for _ in range(rounds):
        net.train()
        t_model += timed(model_only, device)
        t_nchw += timed(model_only_nchw, device)
        t_e2e += timed(end_to_end, device)
        trainer.model.eval()
        t_infer += timed(inference, device)
    n = rounds * steps * batch
    model_ips, e2e_ips = n / t_model, n / t_e2e
    gflop = train_gflop_per_image(trainer, net, x, targets)
    peak = matmul_peak_gflops(device, trainer.bf16, peak_size)
    return {
        "name": name,
        "params_m": count_parameters(trainer.model) / 1e6,
        "batch": batch,
        "image_size": trainer.image_size,
        "train_model_ips": model_ips,
        "train_e2e_ips": e2e_ips,
        "pipeline_overhead_pct": 100 * (model_ips / e2e_ips - 1),
        "train_model_nchw_ips": n / t_nchw,
        "channels_last_gain": t_nchw / t_model,
        "infer_ips": n / t_infer,
        "first_step_s": compile_s,
        "train_gflop_per_image": gflop,
        "achieved_gflops": model_ips * gflop,
        "peak_gflops": peak,
        "peak_share_pct": 100 * model_ips * gflop / peak,
    }


def profile(name: str, data: str, batch_size: int | None, device: str, amp: str, steps: int, top: int = 12) -> None:
    """Where one training step's time goes: the operators with the most self time over `steps` steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    trainer = build_trainer(name, data, batch_size, device, False, amp)
    net = trainer.wrap_model()
    images, labels = next(trainer.train_loader.batches(0))
    x, targets = trainer.augmented_batch(images, labels, trainer.aug_gen)
    for _ in range(2):  # warm-up
        trainer.model_step(net, x, targets)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.model_step(net, x, targets)
    sort = "self_cuda_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
    print(f"{name}: {steps} training steps of batch {x.shape[0]}, operators by self time")
    print(prof.key_averages().table(sort_by=sort, row_limit=top))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    offline = sorted(name for name, p in PRESETS.items() if not p.train.get("pretrained"))  # no hub downloads
    parser.add_argument("--presets", nargs="*", default=offline)
    parser.add_argument("--models", nargs="*", default=[], help="registered model names to add")
    parser.add_argument(
        "--data",
        default=str(SHARED_DATA / "cifar10-dev") if (SHARED_DATA / "cifar10-dev").is_dir() else "digits",
        help="real images for the end-to-end measurement",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: each preset's own")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps per round and kind")
    parser.add_argument("--image-size", type=int, default=None, help="default: each preset's or the data's own")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--peak-size", type=int, default=2048, help="side of the matrices whose product rate is the peak"
    )
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "auto"])
    parser.add_argument("--json", default="benchmarks/results/throughput.json")
    parser.add_argument("--merge", action="store_true", help="replace only the measured rows in --json")
    parser.add_argument(
        "--save-each",
        action="store_true",
        help="rewrite --json after every model, so that a run cut short keeps the models it finished",
    )
    parser.add_argument(
        "--profile", action="store_true", help="print each model's operators by self time instead of measuring"
    )
    args = parser.parse_args()
    if args.profile:
        for name in args.presets + args.models:
            profile(name, args.data, args.batch_size, args.device, args.amp, args.steps)
        return 0

    def payload(rows: list[dict]) -> dict:
        return {
            "machine": machine(),
            "data": project_path(args.data),
            "amp": args.amp,
            "compile": args.compile,
            "device": args.device,
            "rows": rows,
        }

    rows = []
    for name in args.presets + args.models:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        rows.append(
            measure(
                name,
                args.data,
                args.batch_size,
                args.rounds,
                args.steps,
                args.device,
                args.compile,
                args.amp,
                args.image_size,
                args.peak_size,
            )
        )
        if args.save_each and not args.merge:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(payload(rows), indent=2) + "\n")
    if args.merge:
        rows = merge_rows(args.json, rows, "name", "rows", mark=True)
    print_table(
        rows,
        [
            ("name", "model", "s"),
            ("params_m", "params (M)", ".2f"),
            ("batch", "batch", "d"),
            ("image_size", "px", "d"),
            ("train_model_ips", "train img/s (model)", ".1f"),
            ("train_e2e_ips", "train img/s (end-to-end)", ".1f"),
            ("pipeline_overhead_pct", "pipeline cost %", ".1f"),
            ("channels_last_gain", "x channels-last", ".2f"),
            ("infer_ips", "infer img/s", ".1f"),
            ("train_gflop_per_image", "train GFLOP/img", ".3f"),
            ("achieved_gflops", "GFLOP/s", ".0f"),
            ("peak_share_pct", "% of peak", ".1f"),
        ],
    )
    write_json(args.json, payload(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
