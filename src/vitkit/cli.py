"""`vitkit` command line: a thin layer over the Python API (`vitkit.train`, `vitkit.evaluate`, ...)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from . import __version__
from .errors import FILE_SYSTEM_REFUSALS, VitkitError


def add_command_options(p: argparse.ArgumentParser, cls, command: str, groups: dict | None = None) -> None:
    """The flags of dataclass `cls` that `command` takes, with their declared defaults, a value out of bounds
    refused by the parser; among the command's own options unless `groups` titles their groups."""
    from .options import add_dataclass_options

    groups = groups or {f.metadata["group"]: None for f in dataclasses.fields(cls)}
    add_dataclass_options(p, cls, groups, command=command, defaults={}, bounds_in_parser=True)


def given(args: argparse.Namespace, cls, command: str) -> dict:
    """The values of the flags of `cls` that `command` takes."""
    from .options import for_command

    return {name: getattr(args, name) for name in for_command(cls, command)}


# ----------------------------------------------------------------------------- models


def cmd_models(args: argparse.Namespace) -> int:
    from .models import models_table

    print(models_table("presets" if args.presets else "all"))
    return 0


# ----------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    from . import api

    options = training_options(args)  # --max-restarts may come from a --config file
    restarts = options.get("max_restarts", 0)
    if args.nproc > 1 or (args.nproc and restarts):
        from .training.launch import launch_torchrun

        return launch_torchrun(args.nproc, args.argv, restarts)
    if options.pop("resume", False):
        if not options.get("out"):
            raise VitkitError("--resume needs --out RUN_DIR (the run folder to continue)")
        result = api.train(resume=options.pop("out"), started=args.started, **options)
    else:
        result = api.train(started=args.started, **options)
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, one line for the run, not one per process
        from .training.summary import result_summary

        print(json.dumps(result_summary(result)))
    return 0


def training_options(args: argparse.Namespace) -> dict:
    """The training options of a command that takes train's flags: --config FILE.yaml under the flags."""
    from .options import for_command
    from .training.config import MAPPING_OPTIONS, TrainConfig, explicit_values

    flags = {k: v for k, v in vars(args).items() if k in for_command(TrainConfig, args.command)}
    for name in MAPPING_OPTIONS:  # repeated KEY=VALUE flags arrive as a list of pairs
        if name in flags:
            flags[name] = dict(flags[name])
    return explicit_values(getattr(args, "config", None), flags)


def cmd_lr_find(args: argparse.Namespace) -> int:
    from . import api
    from .api import LRFindOptions
    from .training.config import LR_FIND_OPTIONS

    options = {k: v for k, v in training_options(args).items() if k in LR_FIND_OPTIONS}  # a --config has others
    result = api.lr_find(**given(args, LRFindOptions, "lr-find"), **options)
    summary = {k: result[k] for k in ("suggested_lr", "method", "min_loss_lr", "diverged", "plot", "warning")}
    if result["warning"]:
        print(f"vitkit lr-find: warning: {result['warning']}", file=sys.stderr)
    print(json.dumps({**summary, "steps": len(result["lrs"])}))
    return 0


# ----------------------------------------------------------------------------- eval / predict


def evaluation_options(args: argparse.Namespace, command: str) -> tuple[dict, bool]:
    """The data and passes a checkpoint is evaluated with, as `eval` and `top-losses` take them, and --json."""
    from .eval.checkpoint import EvaluationOptions

    options = given(args, EvaluationOptions, command)
    as_json = options.pop("json")
    return {**options, "device": args.device}, as_json


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.checkpoint import evaluate
    from .eval.summary import evaluation_text

    inference_options(args)
    options, as_json = evaluation_options(args, "eval")
    metrics = evaluate(args.checkpoint, precision=args.precision, **options)
    print(json.dumps(metrics, indent=2) if as_json else evaluation_text(metrics))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .eval.calibration import describe_calibration
    from .eval.trust import calibrate

    report = calibrate(args.checkpoint, device=inference_options(args)["device"])
    print(json.dumps(report, indent=2) if args.json else f"{describe_calibration(report)}  ->  {report['checkpoint']}")
    return 0


def cmd_top_losses(args: argparse.Namespace) -> int:
    from .eval.checkpoint import top_losses
    from .eval.summary import top_losses_text

    options, as_json = evaluation_options(args, "top-losses")
    report = top_losses(args.run, **options)
    print(json.dumps(report, indent=2) if as_json else top_losses_text(report))
    return 0


def add_inference_arguments(p: argparse.ArgumentParser, command: str, **defaults) -> None:
    """The flags of `InferenceOptions` that `command` takes (with its own `defaults`, where they differ)."""
    from .inference import InferenceOptions
    from .options import add_dataclass_options

    add_dataclass_options(p, InferenceOptions, INFERENCE_GROUP, command=command, defaults=defaults)


INFERENCE_GROUP = {"inference": "where and how the model runs"}


def inference_options(args: argparse.Namespace) -> dict:
    """The inference flags a command was given, checked before any work."""
    from .inference import InferenceOptions

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(InferenceOptions) if hasattr(args, f.name)}
    InferenceOptions(**values).validate()
    return values


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import load
    from .inference.predict import check_threshold, expand_paths, format_predictions, predict_paths

    options = inference_options(args)
    paths = expand_paths(args.images)
    if not paths:
        raise VitkitError("no images found in the given paths")
    clf = load(args.checkpoint, **options, notice=lambda line: print(f"vitkit predict: {line}", file=sys.stderr))
    check_threshold(clf, args.threshold)
    progress = sys.stderr.isatty()
    results = predict_paths(clf, paths, args.topk, args.batch_size, progress, args.threshold)
    if args.format == "json":
        print(json.dumps({"model": clf.name, **clf.runtime, "results": results}, indent=2))
    else:
        runtime = clf.runtime
        print(
            f"vitkit predict: {clf.name} on {runtime['backend']}, {runtime['device']}, "
            f"{runtime['precision']} ({runtime['precision_reason']})",
            file=sys.stderr,
        )
        print(format_predictions(results, args.format))
    return 1 if any("error" in r for r in results) else 0


def cmd_explain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .inference import load
    from .inference.predict import expand_paths
    from .viz.explain import explain_image

    paths = expand_paths(args.images)
    if not paths:
        raise VitkitError("no images found in the given paths")
    out = Path(args.out)
    if len(paths) > 1 and out.suffix.lower() == ".png":
        raise VitkitError(f"--out {out} is one PNG file but {len(paths)} images were given: pass a folder")
    # one process for many photos: loading torch, the model and matplotlib is most of a single explanation
    clf = load(args.checkpoint, backend="torch", **inference_options(args))
    for path in paths:
        figure = out if out.suffix.lower() == ".png" else out / f"{Path(path).stem}.png"
        figure.parent.mkdir(parents=True, exist_ok=True)
        top, method, note = explain_image(clf, path, figure, topk=args.topk, method=args.method)
        print(
            json.dumps({"path": str(path), "predictions": top, "method": method, "note": note, "figure": str(figure)})
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export.checkpoint import ExportOptions, export_checkpoint

    options = ExportOptions(**given(args, ExportOptions, "export"))
    print(json.dumps(export_checkpoint(args.checkpoint, args.out, options)))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .export.hub import push

    print(json.dumps(push(args.checkpoint, args.repo_id, private=args.private, message=args.message)))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.app import serve
    from .serve.limits import ServeLimits, ServeOptions

    limits = ServeLimits.from_flags(vars(args))
    serve(args.checkpoint, **given(args, ServeOptions, "serve"), limits=limits, **inference_options(args))
    return 0


# ----------------------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    from . import api
    from .check.report import summary_text

    options = {k: v for k, v in vars(args).items() if k not in ("command", "func", "argv", "started")}
    report = api.check(started=args.started, **options)
    print(summary_text(report))
    return 0


# ----------------------------------------------------------------------------- data


def cmd_data_pack(args: argparse.Namespace) -> int:
    from .data.pack import PackOptions, pack_folder

    options = given(args, PackOptions, "data pack")
    report = pack_folder(args.folder, args.out, skip_bad=options.pop("skip_bad_images"), **options)
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

    p = sub.add_parser("models", help="list models and presets with their sizes")
    p.add_argument("--presets", action="store_true", help="presets only")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("presets", help="list the presets (recipes and seed reproductions) with their sizes")
    p.set_defaults(func=cmd_models, presets=True)

    from .api import LRFindOptions
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
    add_dataclass_options(p, TrainConfig, GROUPS, command="train")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "lr-find",
        help="learning-rate range test: loss against an exponentially growing rate, and a suggestion",
        description="Train a fresh model (same data, model and augmentation flags as train) for at most "
        "--steps steps while the learning rate grows exponentially from --start-lr to --end-lr, stopping "
        "when the loss diverges. Writes the loss against the rate (log axis) to --plot and prints JSON: "
        "suggested_lr is where the smoothed loss falls fastest (steepest descent against log lr); "
        "min_loss_lr is where it is lowest (a tenth of it is the other common rule). Nothing is saved "
        "but the plot.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", metavar="FILE.yaml", help="options from a YAML file (e.g. a run's args.yaml); flags win")
    add_command_options(p, LRFindOptions, "lr-find")
    add_dataclass_options(p, TrainConfig, GROUPS, command="lr-find")
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("calibrate", help="fit a run's temperature and unknown-input thresholds on its validation split")
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_inference_arguments(p, "calibrate")
    p.set_defaults(func=cmd_calibrate)

    from .eval.checkpoint import EvaluationOptions

    p = sub.add_parser("eval", help="recompute a checkpoint's metrics on a dataset split")
    p.add_argument("checkpoint")
    add_command_options(p, EvaluationOptions, "eval")
    add_inference_arguments(p, "eval", precision="fp32")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "top-losses",
        help="the most confident mistakes of a run: a grid of images and the list, highest loss first",
        description="The misclassified images of a split (by default the one the run reported on) with the "
        "highest loss, i.e. the lowest probability given to the true class: printed, and drawn as a grid "
        "titled predicted (probability) / true / loss.",
    )
    p.add_argument("run", help="run folder or checkpoint folder")
    add_command_options(p, EvaluationOptions, "top-losses")
    add_inference_arguments(p, "top-losses")
    p.set_defaults(func=cmd_top_losses)

    from .inference.predict import PredictOptions

    p = sub.add_parser(
        "predict", help="top-k labels for images, folders or globs (multi-label: every label above its threshold)"
    )
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+", help="image files, folders or globs")
    add_command_options(p, PredictOptions, "predict")
    add_inference_arguments(p, "predict")
    p.set_defaults(func=cmd_predict)

    from .viz.explain import ExplainOptions

    p = sub.add_parser(
        "explain",
        help="the photo, the model's input and a heat map of what drove the prediction, beside the top-5",
        description="Heat maps by --method: auto picks attention rollout for ViTs whose tokens are image patches, "
        "Grad-CAM on the token grid for hybrids and convolutional tokenizers (whose tokens already mix much of "
        "the image, so rollout cannot place evidence), and gradient saliency for models without tokens.",
    )
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+", help="image files, folders or globs")
    add_command_options(p, ExplainOptions, "explain")
    add_inference_arguments(p, "explain")
    p.set_defaults(func=cmd_explain)

    from .serve.limits import LIMITS_GROUP, ServeLimits, ServeOptions

    p = sub.add_parser("serve", help="HTTP API and web page for a checkpoint")
    p.add_argument("checkpoint")
    add_command_options(p, ServeOptions, "serve")
    add_inference_arguments(p, "serve")
    add_command_options(p, ServeLimits, "serve", LIMITS_GROUP)
    p.set_defaults(func=cmd_serve)

    from .check import CheckOptions

    p = sub.add_parser(
        "check",
        help="find what is wrong with a dataset before training: broken files, duplicates and leaks, balance, "
        "likely label errors",
        description="Read DATA as vitkit train would (an image folder, a folder with --labels TABLE, a built-in "
        "or hf:NAME dataset), never changing it, and write a report to --out: check.html (with thumbnails), "
        "check.json, and CSVs, among them exclude.csv for vitkit train --exclude.",
    )
    p.add_argument("data", help="an image folder, a folder with --labels TABLE, a built-in dataset or hf:NAME")
    add_dataclass_options(
        p, CheckOptions, {"data": "the data", "run": "seed", "check": "the check"}, command="check", defaults={}
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    from .data.pack import PackOptions

    p = data_sub.add_parser(
        "pack",
        help="an image folder as parquet shards (Hugging Face layout) that stream well",
        description="Pack DIR/<class>/* or DIR/{train,val,test}/<class>/* into OUT/data/<split>-*.parquet; "
        "train on it with --data OUT.",
    )
    p.add_argument("folder")
    p.add_argument("out")
    add_command_options(p, PackOptions, "data pack")
    p.set_defaults(func=cmd_data_pack)

    from .export.checkpoint import GROUP_TITLES, ExportOptions

    p = sub.add_parser(
        "export", help="export a checkpoint as ONNX or as a Hugging Face folder (with a model card README.md)"
    )
    p.add_argument("checkpoint")
    p.add_argument(
        "out",
        help="the .onnx file, or a folder to write RUN.onnx (RUN-int8.onnx) into; with --format hf, the folder",
    )
    add_command_options(p, ExportOptions, "export", GROUP_TITLES)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "push",
        help="upload a checkpoint with a model card to the Hugging Face hub",
        description="Upload a run's best checkpoint with a model card (README.md) to the Hugging Face hub, creating "
        "the repo when new: in transformers' layout when transformers can hold the model, else as a vitkit "
        "checkpoint. Load it back with vitkit.load(REPO_ID), vitkit predict REPO_ID or --pretrained REPO_ID. "
        "Uses HF_ENDPOINT, and the token of HF_TOKEN or `hf auth login`.",
    )
    p.add_argument("checkpoint", help="a run folder or a checkpoint folder (best/, last/)")
    p.add_argument("repo_id", help="owner/name")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its own)")
    p.add_argument("--message", help="commit message (default: Upload RUN with vitkit)")
    p.set_defaults(func=cmd_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    # when the command began, for --time-budget: this process's start when it is the command (argv None),
    # else (a call from Python) now
    started = time.monotonic()
    if argv is None:
        from .runtime import process_start

        started = process_start() or started
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # what `train --nproc` hands on to its processes
    args.started = started
    try:
        return args.func(args)
    except VitkitError as e:  # the user's mistake, said in one line; anything else is a bug and keeps its traceback
        print(f"vitkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in FILE_SYSTEM_REFUSALS:
            raise
        # the file system's refusal, not vitkit's bug: name the file and what to do
        print(f"vitkit {args.command}: error: {e.filename}: {FILE_SYSTEM_REFUSALS[e.errno]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitkit {args.command}: interrupted", file=sys.stderr)
        return 130
