"""`vitkit` command line: a thin layer over the Python API (`vitkit.train`, `vitkit.evaluate`, ...)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys

from . import __version__


class UserError(Exception):
    """A mistake in the command's input: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- models


def cmd_models(args: argparse.Namespace) -> int:
    from .models import PRESETS, count_parameters, create_model, list_models

    names = list_models("presets" if args.presets else "all")
    width = max(map(len, names))
    for name in names:
        model = create_model(name)
        kind = "preset" if name in PRESETS else model.family
        desc = PRESETS[name].description if name in PRESETS else ""
        print(
            f"{name:<{width}}  {kind:<7} {count_parameters(model) / 1e6:8.2f}M  "
            f"{model.config.image_size:>3}px  {desc}".rstrip()
        )
    return 0


# ----------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    from . import api
    from .options import read_yaml_options
    from .training.config import TrainConfig

    if getattr(args, "nproc", 0) > 1:
        from .training.launch import launch_torchrun

        return launch_torchrun(args.nproc, sys.argv[1:])
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func", "nproc", "config")}
    if "model_args" in flags:
        flags["model_args"] = dict(flags["model_args"])
    options = {**(read_yaml_options(args.config, TrainConfig) if getattr(args, "config", None) else {}), **flags}
    if options.pop("resume", False):
        if not options.get("out"):
            raise UserError("--resume needs --out RUN_DIR (the run folder to continue)")
        result = api.train(resume=options.pop("out"), **options)
    else:
        result = api.train(**options)
    print(
        json.dumps(
            {"run_dir": result["run_dir"], "test_top1": result["test"]["top1"], "test_top5": result["test"]["top5"]}
        )
    )
    return 0


# ----------------------------------------------------------------------------- eval / predict


def cmd_eval(args: argparse.Namespace) -> int:
    from . import api

    metrics = api.evaluate(
        args.checkpoint,
        data=args.data,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        data_dir=args.data_dir,
    )
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{metrics['data']} [{metrics['split']}] {metrics['count']} images")
        for key in ("top1", "top5", "loss", "precision_macro", "recall_macro", "f1_macro", "f1_weighted"):
            print(f"  {key:<16} {metrics[key]:.4f}")
    return 0


def format_predictions(results: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(results, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "rank", "label", "score"])
        for r in results:
            for rank, p in enumerate(r.get("predictions", []), 1):
                writer.writerow([r["path"], rank, p["label"], p["score"]])
            if "error" in r:
                writer.writerow([r["path"], "", "ERROR", r["error"]])
        return buffer.getvalue().rstrip("\n")
    lines = []
    for r in results:
        if "error" in r:
            lines.append(f"{r['path']}: ERROR {r['error']}")
            continue
        preds = "  ".join(f"{p['label']} {p['score']:.3f}" for p in r["predictions"])
        lines.append(f"{r['path']}: {preds}")
    return "\n".join(lines)


def cmd_predict(args: argparse.Namespace) -> int:
    from . import api
    from .predict import expand_paths, predict_paths

    paths = expand_paths(args.images)
    if not paths:
        raise UserError("no images found in the given paths")
    clf = api.load(args.checkpoint, device=args.device, backend=args.backend, precision=args.precision)
    results = predict_paths(clf, paths, args.topk, args.batch_size, progress=sys.stderr.isatty())
    print(format_predictions(results, args.format))
    return 1 if any("error" in r for r in results) else 0


def cmd_explain(args: argparse.Namespace) -> int:
    from . import api
    from .viz.explain import explain_image

    clf = api.load(args.checkpoint, device=args.device)
    top = explain_image(clf, args.image, args.out, topk=args.topk)
    print(json.dumps({"path": args.image, "predictions": top, "figure": args.out}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from . import api

    if args.format == "onnx":
        from .export.onnx import export_onnx

        report = export_onnx(api.load(args.checkpoint, device="cpu"), args.out, opset=args.opset)
        print(json.dumps({"onnx": args.out, "max_abs_logit_diff": report}))
    else:
        from .pretrained.hf import save_hf_folder

        clf = api.load(args.checkpoint, device="cpu")
        save_hf_folder(clf.model, clf.class_names, clf.meta.get("preprocessing", {}), args.out)
        print(json.dumps({"hf": args.out}))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.app import serve

    serve(
        args.checkpoint,
        host=args.host,
        port=args.port,
        backend=args.backend,
        max_upload_mb=args.max_upload_mb,
        device=args.device,
        precision=args.precision,
    )
    return 0


# ----------------------------------------------------------------------------- parser


# ----------------------------------------------------------------------------- data


def cmd_data_pack(args: argparse.Namespace) -> int:
    from .data.pack import pack_folder

    report = pack_folder(
        args.folder,
        args.out,
        size=args.size,
        quality=args.quality,
        shard_mb=args.shard_mb,
        skip_bad=args.skip_bad_images,
    )
    for line in report.skipped:
        print(f"skipped {line}", file=sys.stderr)
    print(f"{report.images} images in {report.shards} shards ({report.bytes / (1 << 20):.1f} MiB) -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitkit", description="Vision Transformers and all-MLP image classifiers: train, evaluate, predict."
    )
    parser.add_argument("--version", action="version", version=f"vitkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list models and presets")
    p.add_argument("--presets", action="store_true", help="presets only")
    p.set_defaults(func=cmd_models)

    from .options import add_dataclass_options
    from .training.config import GROUPS, TrainConfig

    p = sub.add_parser(
        "train",
        help="train a model; writes a run folder of metrics, plots and weights",
        description="Train a model into a run folder. Values come from the declared defaults, then the "
        "dataset's, then --preset, then --config FILE.yaml, then the flags given here.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", metavar="FILE.yaml", help="options from a YAML file (e.g. a run's args.yaml); flags win")
    p.add_argument("--nproc", type=int, default=0, help="processes on this machine (launches torchrun)")
    add_dataclass_options(p, TrainConfig, GROUPS)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="recompute a checkpoint's metrics on a dataset split")
    p.add_argument("checkpoint")
    p.add_argument("--data", help="dataset name or folder (default: what the checkpoint was trained on)")
    p.add_argument("--data-dir")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print every metric as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k labels for images, folders or globs")
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--format", default="table", choices=["table", "json", "csv"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnxruntime"],
        help="auto: ONNX Runtime when installed (exact), else PyTorch",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="bf16: PyTorch under bf16 autocast, about 2x on CPUs with native bf16",
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="attention rollout (ViT) or saliency map beside the top-5")
    p.add_argument("checkpoint")
    p.add_argument("image")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("serve", help="HTTP API and web page for a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--max-upload-mb", type=float, default=10)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser(
        "pack",
        help="an image folder as parquet shards (Hugging Face layout) that stream well",
        description="Pack DIR/<class>/* or DIR/{train,val,test}/<class>/* into OUT/data/<split>-*.parquet; "
        "train on it with --data OUT.",
    )
    p.add_argument("folder")
    p.add_argument("out")
    p.add_argument("--size", type=int, help="shrink larger images to this shorter side (default: keep every image)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality of resized images (default: 95)")
    p.add_argument("--shard-mb", type=float, default=256, help="image bytes per shard (default: 256)")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of failing")
    p.set_defaults(func=cmd_data_pack)

    p = sub.add_parser("export", help="export a checkpoint as ONNX or as a Hugging Face folder")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--format", default="onnx", choices=["onnx", "hf"])
    p.add_argument("--opset", type=int, default=18)
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"vitkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitkit {args.command}: interrupted", file=sys.stderr)
        return 130
