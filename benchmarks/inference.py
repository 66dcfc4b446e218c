"""Inference speed and agreement, one run: Hugging Face transformers' ViTForImageClassification in fp32
against every vitkit path (PyTorch fp32 and bf16, ONNX Runtime fp32 and INT8, OpenVINO when installed,
and the path `vitkit predict` / `vitkit.load` take by default), on identical ViT weights.

Speed: images/s at --batch-size and single-image latency (p50/p95) on --model (weights identical to
transformers' copy, which is loaded from vitkit's Hugging Face export as a user would load it).
Agreement: each path's top-1 agreement with fp32 and its accuracy change on real held-out images, from
a trained checkpoint (--checkpoint RUN, judged on the split its run reported), as random weights on
random inputs make every argmax a coin toss.

    python benchmarks/inference.py --checkpoint runs/vit-cifar
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import hf_twin, machine, print_table, project_path, write_json

import vitkit
from vitkit.data.loader import BatchLoader
from vitkit.eval.agreement import agreement_report, predicted_classes
from vitkit.eval.checkpoint import checkpoint_split
from vitkit.export.quantize import calibration_batches, quantize_int8
from vitkit.inference import Classifier, OnnxModel, cached_onnx_export
from vitkit.models import create_model


def openvino_runner(onnx_path: Path):
    """OpenVINO's CPU plugin on the fp32 ONNX export (its own choice of precision), or None when not installed."""
    try:
        import openvino
    except ImportError:
        return None
    compiled = openvino.Core().compile_model(str(onnx_path), "CPU")
    return lambda x: torch.from_numpy(compiled(x.numpy())[0])


def vitkit_paths(clf: Classifier, folder: Path, workdir: Path, calibration: list) -> dict:
    """name -> a callable from normalised images to logits, for every way vitkit can run `clf`, the
    classifier of checkpoint `folder` (its fp32 ONNX export is the one `vitkit.load` caches)."""
    fp32 = cached_onnx_export(folder, clf)
    paths = {
        "vitkit PyTorch fp32": clf.model,
        "vitkit PyTorch bf16": Classifier(clf.model, clf.meta, "cpu", "bf16").runner,
        "vitkit ONNX Runtime fp32": OnnxModel(fp32),
        "vitkit ONNX Runtime int8": OnnxModel(quantize_int8(clf, calibration, workdir, fp32)),
    }
    openvino = openvino_runner(fp32)
    if openvino is not None:
        paths["OpenVINO fp32 export"] = openvino
    return paths


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


def measure_agreement(checkpoint: str, calibration_images: int) -> tuple[dict, dict]:
    """{path name: agreement report} of every vitkit path of a trained checkpoint on its reported split,
    and what that checkpoint is and the default path (`vitkit.load` with no options) chose for it."""
    reference = vitkit.load(checkpoint, device="cpu", backend="torch", precision="fp32")
    data, dataset, split, part = checkpoint_split(reference, None, None, {})
    calibration = calibration_batches(
        dataset.train, reference.input_transform.for_inference, calibration_images, seed=0
    )
    loader = BatchLoader(part, 256, shuffle=False)
    default = vitkit.load(checkpoint, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        paths = vitkit_paths(reference, reference.folder, Path(tmp), calibration)
        fp32, labels = predicted_classes(reference.model, loader, reference.input_transform.for_inference)
        reports = {}
        for name, run in paths.items():
            candidate, _ = predicted_classes(run, loader, reference.input_transform.for_inference)
            reports[name] = {**agreement_report(fp32, candidate, labels, name, split), "data": data}
        candidate, _ = predicted_classes(default.runner, loader, reference.input_transform.for_inference)
        reports["vitkit default (vitkit.load)"] = agreement_report(fp32, candidate, labels, "default", split)
    trained = reference.meta.get("train_config") or {}
    described = {"model": reference.summary, "data": project_path(str(data)), "split": split, "images": len(part)}
    described.update({k: trained[k] for k in ("preset", "time_budget", "epochs", "val_split") if k in trained})
    return reports, {"checkpoint": described, "default_path": default.runtime}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny_patch16_224", help="the ViT whose speed is measured")
    parser.add_argument("--checkpoint", help="a trained run whose agreement with fp32 is measured (default: none)")
    parser.add_argument("--calibration-images", type=int, default=256, help="INT8 calibration images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0, help="per path and measurement round")
    parser.add_argument("--rounds", type=int, default=2, help="paths are measured round-robin this many times")
    parser.add_argument("--latency-repeats", type=int, default=40)
    parser.add_argument("--json", default="benchmarks/results/inference.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model(args.model).eval()
    size = model.config.image_size
    tmp = Path(tempfile.mkdtemp())
    hf = hf_twin(model, tmp / "hf")
    default = vitkit.load(tmp / "hf", device="cpu")  # what `vitkit predict` runs on this folder by default
    print(f"default path: {default.runtime}", file=sys.stderr)
    x = torch.randn(args.batch_size, 3, size, size)
    # speed does not depend on the calibration data, so random images calibrate the speed model's INT8
    calibration = [torch.randn(8, 3, size, size).numpy() for _ in range(2)]
    paths = {"transformers fp32": lambda t: hf(pixel_values=t).logits}
    paths.update(vitkit_paths(Classifier(model, default.meta, "cpu", "fp32"), tmp / "hf", tmp, calibration))
    paths["vitkit default (vitkit.load)"] = default.runner

    rows = {name: {"path": name, "ips": 0.0} for name in paths}
    with torch.inference_mode():
        reference = paths["transformers fp32"](x)
        for name, fn in paths.items():
            rows[name]["max_abs_logit_diff"] = (fn(x) - reference).abs().max().item()
        for _ in range(args.rounds):  # round-robin so drift hits every path alike
            for name, fn in paths.items():
                rows[name]["ips"] += throughput(fn, x, args.seconds) / args.rounds
        for name, fn in paths.items():
            rows[name]["p50_ms"], rows[name]["p95_ms"] = latency(fn, x[:1], args.latency_repeats)
    base = rows["transformers fp32"]["ips"]
    for row in rows.values():
        row["speedup_vs_transformers_fp32"] = row["ips"] / base

    agreement, agreement_on = {}, None
    if args.checkpoint:
        agreement, agreement_on = measure_agreement(args.checkpoint, args.calibration_images)
        for name, report in agreement.items():
            rows[name].update(top1_agreement=report["top1_agreement"], top1_delta=report["top1_delta"])
    table = list(rows.values())
    print(f"\n{args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads")
    columns = [
        ("path", "path", "s"),
        ("ips", f"img/s @ {args.batch_size}", ".1f"),
        ("speedup_vs_transformers_fp32", "x transformers fp32", ".2f"),
        ("p50_ms", "p50 ms (1 img)", ".1f"),
        ("p95_ms", "p95 ms (1 img)", ".1f"),
        ("max_abs_logit_diff", "max |dlogit|", ".1e"),
    ]
    if agreement:
        columns += [("top1_agreement", "top-1 agreement", ".4f"), ("top1_delta", "top-1 delta", "+.4f")]
    print_table(table, columns)
    write_json(
        args.json,
        {
            "machine": machine(),
            "model": args.model,
            "batch_size": args.batch_size,
            "default_path": default.runtime,
            "agreement_measured_on": agreement_on,
            "agreement": agreement,
            "rows": table,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
