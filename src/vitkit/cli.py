"""`vitkit` command line: a thin layer over the Python API (`vitkit.train`, `vitkit.evaluate`, ...)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import errno
import io
import json
import os
import sys
import time

from . import __version__
from .errors import VitkitError


def within(low: int, high: int | None = None):
    """An argparse type for whole numbers from low to high (no upper bound: None), refused in one line
    naming the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum of {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{value} is above the maximum of {high}")
        return value

    parse.__name__ = f"whole number >= {low}" if high is None else f"whole number from {low} to {high}"
    return parse


def at_least(low: int):
    """An argparse type for whole numbers >= low."""
    return within(low)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


# ----------------------------------------------------------------------------- models


def cmd_models(args: argparse.Namespace) -> int:
    import torch

    from .models import PRESETS, count_parameters, create_model, list_models

    names = list_models("presets" if args.presets else "all")
    width = max(map(len, names))
    print(f"{'name':<{width}}  {'family':<7} {'params':>9}  {'size':>5}  description")
    for name in names:
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = create_model(name)
        kind = "preset" if name in PRESETS else model.family
        desc = PRESETS[name].description if name in PRESETS else ""
        print(
            f"{name:<{width}}  {kind:<7} {count_parameters(model) / 1e6:8.2f}M  "
            f"{model.config.image_size:>3}px  {desc}".rstrip()
        )
        sizes = PRESETS[name].budget_sizes if name in PRESETS else ()
        for epochs, changes in sizes:
            with torch.device("meta"):
                sized = create_model(PRESETS[name].model, **{**PRESETS[name].model_args, **changes})
            what = ", ".join(f"{key}={value}" for key, value in changes.items())
            print(
                f"{'':<{width}}  {'':<7} {count_parameters(sized) / 1e6:8.2f}M         "
                f"with a --time-budget that trains it {epochs:g}+ epochs here: {what}"
            )
    return 0


# ----------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    from . import api

    if getattr(args, "nproc", 0) > 1:
        from .training.launch import launch_torchrun

        return launch_torchrun(args.nproc, args.argv)
    options = training_options(args, ("nproc",))
    if options.pop("resume", False):
        if not options.get("out"):
            raise VitkitError("--resume needs --out RUN_DIR (the run folder to continue)")
        result = api.train(resume=options.pop("out"), started=args.started, **options)
    else:
        result = api.train(started=args.started, **options)
    metrics, split = result["metrics"], result["split"]
    if "map_macro" in metrics:
        keys = ["map_macro", "map_micro", "f1_macro", "f1_micro", "f1_micro@0.5"]
        keys += ["mean_predicted_labels", "mean_true_labels"]
    else:  # top-5 of 5 classes or fewer is 1 by definition
        keys = ["top1", "top5"] if len(metrics["class_names"]) > 5 else ["top1"]
    summary = {"run_dir": result["run_dir"], "split": split, **{f"{split}_{key}": metrics[key] for key in keys}}
    summary["split_selected_checkpoint"] = result["split_selected_checkpoint"]
    print(json.dumps(summary))
    return 0


def training_options(args: argparse.Namespace, own: tuple[str, ...]) -> dict:
    """The training options of a command that takes train's flags: --config FILE.yaml under the flags."""
    from .training.config import MAPPING_OPTIONS, explicit_values

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func", "argv", "started", "config", *own)}
    for name in MAPPING_OPTIONS:  # repeated KEY=VALUE flags arrive as a list of pairs
        if name in flags:
            flags[name] = dict(flags[name])
    return explicit_values(getattr(args, "config", None), flags)


def cmd_lr_find(args: argparse.Namespace) -> int:
    from . import api
    from .training.config import LR_FIND_OPTIONS

    options = training_options(args, ("steps", "start_lr", "end_lr", "plot"))
    options = {k: v for k, v in options.items() if k in LR_FIND_OPTIONS}  # a --config file has the others too
    result = api.lr_find(steps=args.steps, start_lr=args.start_lr, end_lr=args.end_lr, plot=args.plot, **options)
    summary = {k: result[k] for k in ("suggested_lr", "method", "min_loss_lr", "diverged", "plot", "warning")}
    if result["warning"]:
        print(f"vitkit lr-find: warning: {result['warning']}", file=sys.stderr)
    print(json.dumps({**summary, "steps": len(result["lrs"])}))
    return 0


# ----------------------------------------------------------------------------- eval / predict


DATA_DIR_HELP = "cache of downloaded and decoded datasets (default: $VITKIT_DATA, else ~/.cache/vitkit)"


def add_evaluation_arguments(p: argparse.ArgumentParser) -> None:
    """The flags `evaluation_options` reads."""
    p.add_argument(
        "--data",
        help="dataset name or folder (default: what the checkpoint was trained on); other data than the run's is "
        "scored whole: every image of a folder or label table, a named dataset's test split",
    )
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--labels", help="label table of --data's images (default: the checkpoint's, if it had one)")
    p.add_argument(
        "--split",
        choices=["all", "train", "val", "test"],
        help="on the run's own data, default: the split the run reported (test, else val); on other data, one of "
        "its own splits, or all (the default for a folder or table)",
    )
    p.add_argument("--batch-size", type=at_least(1), default=256, help="images per batch (default: 256)")
    p.add_argument(
        "--flip-tta",
        action="store_true",
        help="average each image's logits with its mirror image's (test-time flip augmentation; twice the compute)",
    )


def evaluation_options(args: argparse.Namespace) -> dict:
    """The data a checkpoint is evaluated on, as `eval` and `top-losses` both take it."""
    return {k: getattr(args, k) for k in ("data", "split", "batch_size", "device", "data_dir", "flip_tta", "labels")}


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.agreement import describe
    from .eval.checkpoint import evaluate

    inference_options(args)
    metrics = evaluate(
        args.checkpoint, precision=args.precision, crop_tta=args.crop_tta, **evaluation_options(args)
    )
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        tta = [name for name, on in (("flip", metrics["flip_tta"]), ("crop", metrics.get("crop_tta"))) if on]
        split = f"{metrics['split']}, {' + '.join(tta)} TTA" if tta else metrics["split"]
        print(f"{metrics['data']} [{split}] {metrics['count']} images, {metrics['precision']}")
        if not metrics["run_data"]:
            print(f"  scored: {metrics['source']} (not the run's data)")
        if "map_macro" in metrics:
            from .eval.multilabel import label_table

            for key in ("map_macro", "map_micro", "f1_macro", "f1_micro", "f1_macro@0.5", "f1_micro@0.5", "loss"):
                print(f"  {key:<16} {metrics[key]:.4f}")
            print(
                f"  labels per image: {metrics['mean_predicted_labels']:.2f} predicted at the tuned thresholds, "
                f"{metrics['mean_predicted_labels@0.5']:.2f} at 0.5, {metrics['mean_true_labels']:.2f} true"
            )
            print(label_table(metrics))
            return 0
        keys = ["top1", "top5", "loss", "precision_macro", "recall_macro", "f1_macro", "f1_weighted"]
        if len(metrics["class_names"]) <= 5:  # top-5 of 5 classes or fewer is 1 by definition
            keys.remove("top5")
        for key in keys:
            print(f"  {key:<16} {metrics[key]:.4f}")
        if "agreement" in metrics:
            print(f"  {describe(metrics['agreement'])}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .eval.calibration import describe_calibration
    from .eval.trust import calibrate

    report = calibrate(args.checkpoint, device=inference_options(args)["device"])
    print(json.dumps(report, indent=2) if args.json else f"{describe_calibration(report)}  ->  {report['checkpoint']}")
    return 0


def cmd_top_losses(args: argparse.Namespace) -> int:
    from .eval.checkpoint import top_losses

    report = top_losses(args.run, count=args.count, out=args.out, **evaluation_options(args))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['data']} [{report['split']}]: {report['mistakes']} mistakes in {report['images']} images")
    if not report["run_data"]:
        print(f"  scored: {report['source']} (not the run's data)")
    for rank, item in enumerate(report["items"], 1):
        where = item.get("path", f"#{item['index']}")
        print(
            f"{rank:>3}  loss {item['loss']:.3f}  predicted {item['predicted']} ({item['probability']:.3f})  "
            f"true {item['true']} ({item['true_probability']:.3f})  {where}"
        )
    if report["figure"]:
        print(f"-> {report['figure']}")
    return 0


# What a spreadsheet reads as the start of a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(cell: str) -> str:
    """A text cell a spreadsheet shows as text: one that would start a formula gets a leading quote."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def format_predictions(results: list[dict], fmt: str) -> str:
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "rank", "label", "score"])
        for r in results:
            path = spreadsheet_text(str(r["path"]))
            for rank, p in enumerate(r.get("predictions", []), 1):
                writer.writerow([path, rank, spreadsheet_text(p["label"]), p["score"]])
            if "error" in r:
                writer.writerow([path, "", "ERROR", spreadsheet_text(r["error"])])
            if r.get("unknown"):  # --reject-unknown: the score that fell below the threshold
                writer.writerow([path, "", "unknown", r["unknown_score"]])
        return buffer.getvalue().rstrip("\n")
    lines = []
    for r in results:
        if "error" in r:
            lines.append(f"{r['path']}: ERROR {r['error']}")
            continue
        preds = "  ".join(f"{p['label']} {p['score']:.3f}" for p in r["predictions"] or r.get("nearest", []))
        unknown = f"unknown (score {r['unknown_score']:.3f}), nearest: " if r.get("unknown") else ""
        lines.append(f"{r['path']}: {unknown}{preds}")
    return "\n".join(lines)


def add_inference_arguments(p: argparse.ArgumentParser, command: str, **defaults) -> None:
    """The flags of `InferenceOptions` that `command` takes (with its own `defaults`, where they differ)."""
    from .options import add_dataclass_options
    from .inference import InferenceOptions

    add_dataclass_options(p, InferenceOptions, INFERENCE_GROUP, command=command, defaults=defaults)


INFERENCE_GROUP = {"inference": "where and how the model runs"}


def inference_options(args: argparse.Namespace) -> dict:
    """The inference flags a command was given, checked before any work."""
    import dataclasses

    from .inference import InferenceOptions

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(InferenceOptions) if hasattr(args, f.name)}
    InferenceOptions(**values).validate()
    return values


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import load
    from .inference.predict import check_threshold, expand_paths, predict_paths

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


def check_writable(out: str, what: str) -> None:
    """Refuse, before any work, an output whose nearest existing folder this process cannot write to
    (a read-only run folder, a mounted dataset)."""
    from pathlib import Path

    target = Path(out).absolute()
    if target.is_file() and what == "folder":
        raise VitkitError(f"{out} is a file: the {what} to write must be a new or existing folder")
    folder = next(p for p in (target if target.is_dir() else target.parent, *target.parents) if p.exists())
    if not os.access(folder, os.W_OK | os.X_OK):
        raise VitkitError(f"cannot write {out}: {folder} is read-only; write the {what} somewhere else")


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .inference import checkpoint_name, load

    if args.format == "onnx" and os.path.isdir(args.out):  # as cp takes a folder: into it, named after the checkpoint
        name = checkpoint_name(Path(args.checkpoint)) + ("-int8" if args.quantize else "")
        args.out = os.path.join(args.out, f"{name}.onnx")
    check_writable(args.out, "file" if args.format == "onnx" else "folder")
    if args.quantize and args.format != "onnx":
        raise VitkitError("--quantize int8 applies to --format onnx")
    if args.quantize:
        from .export.int8 import export_int8

        report = export_int8(
            args.checkpoint,
            args.out,
            data=args.data,
            data_dir=args.data_dir,
            min_agreement=args.min_agreement,
            force=args.force,
            calibration_images=args.calibration_images,
        )
        print(f"vitkit export: {report['summary']} -> {report['report']}", file=sys.stderr)
        print(json.dumps({"onnx": report["onnx"], "agreement": report["agreement"]}))
    elif args.format == "onnx":
        from .export.onnx import export_onnx

        report = export_onnx(
            load(args.checkpoint, device="cpu", backend="torch", precision="fp32"), args.out, opset=args.opset
        )
        print(json.dumps({"onnx": args.out, "max_abs_logit_diff": report}))
    else:
        from .export.hub import write_hf_folder

        clf = load(args.checkpoint, device="cpu", backend="torch", precision="fp32")
        write_hf_folder(clf, Path(args.checkpoint), args.out, title=clf.name, load_as=args.out)
        if clf.preprocessing.decode_size is not None:
            print(
                f"vitkit export: note: {args.checkpoint} decodes images at {clf.preprocessing.decode_size} px and "
                f"resizes them to {clf.image_size} px on the device; the exported processor resizes in one step, "
                "so its scores differ slightly from vitkit's",
                file=sys.stderr,
            )
        print(json.dumps({"hf": args.out}))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .export.hub import push

    print(json.dumps(push(args.checkpoint, args.repo_id, private=args.private, message=args.message)))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.app import serve
    from .serve.limits import ServeLimits

    limits = ServeLimits.from_flags(vars(args))
    if limits.max_inflight_bytes < limits.max_upload_bytes:
        raise VitkitError(
            f"--max-inflight-mb {args.max_inflight_mb:g} is below --max-upload-mb {args.max_upload_mb:g}: "
            "a single full-size upload could never be accepted"
        )
    serve(args.checkpoint, host=args.host, port=args.port, topk=args.topk, limits=limits, **inference_options(args))
    return 0


# ----------------------------------------------------------------------------- parser


# ----------------------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    from . import api

    options = {k: v for k, v in vars(args).items() if k not in ("command", "func", "argv", "started")}
    report = api.check(started=args.started, **options)
    leaks = sum(d["kind"] == "leak" for d in report["duplicates"])
    fatal = sum(f["fatal"] for f in report["files"])
    print(
        f"{report['images']} images: {len(report['files'])} file problem(s) ({fatal} that stop training), "
        f"{len(report['duplicates'])} duplicate pair(s) ({leaks} leak(s) between splits), "
        f"{len(report['balance']['too_few_for_validation'])} class(es) too small for validation, "
        f"{len(report['label_errors'])} likely label error(s)"
    )
    out = report["out"]
    print(f"-> {out}/check.html (also check.json; exclude.csv for vitkit train --exclude)")
    return 0


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

    p = sub.add_parser("models", help="list models and presets with their sizes")
    p.add_argument("--presets", action="store_true", help="presets only")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("presets", help="list the presets (recipes and seed reproductions) with their sizes")
    p.set_defaults(func=cmd_models, presets=True)

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
    p.add_argument("--steps", type=at_least(2), default=100, help="optimizer steps at most (default: 100)")
    p.add_argument("--start-lr", type=positive_float, default=1e-7, help="first learning rate (default: 1e-7)")
    p.add_argument("--end-lr", type=positive_float, default=10.0, help="last learning rate (default: 10)")
    p.add_argument("--plot", default="lr_find.png", help="PNG file to write (default: lr_find.png)")
    add_dataclass_options(p, TrainConfig, GROUPS, command="lr-find")
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("calibrate", help="fit a run's temperature and unknown-input thresholds on its validation split")
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_inference_arguments(p, "calibrate")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("eval", help="recompute a checkpoint's metrics on a dataset split")
    p.add_argument("checkpoint")
    add_evaluation_arguments(p)
    add_inference_arguments(p, "eval", precision="fp32")
    p.add_argument(
        "--crop-tta",
        action="store_true",
        help="multi-crop test-time augmentation: also two crops moved one pixel diagonally, weighted a quarter "
        "each (with --flip-tta each with its mirror: six passes)",
    )
    p.add_argument("--json", action="store_true", help="print every metric as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "top-losses",
        help="the most confident mistakes of a run: a grid of images and the list, highest loss first",
        description="The misclassified images of a split (by default the one the run reported on) with the "
        "highest loss, i.e. the lowest probability given to the true class: printed, and drawn as a grid "
        "titled predicted (probability) / true / loss.",
    )
    p.add_argument("run", help="run folder or checkpoint folder")
    p.add_argument("--count", type=at_least(1), default=16, help="mistakes to show (default: 16)")
    p.add_argument("--out", default="top_losses.png", help="PNG file to write (default: top_losses.png)")
    add_evaluation_arguments(p)
    add_inference_arguments(p, "top-losses")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_top_losses)

    p = sub.add_parser(
        "predict", help="top-k labels for images, folders or globs (multi-label: every label above its threshold)"
    )
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+", help="image files, folders or globs")
    p.add_argument(
        "--topk", type=at_least(1), default=5, help="labels per image, best first (default: 5; not for multi-label)"
    )
    p.add_argument(
        "--format",
        default="table",
        choices=["table", "json", "csv"],
        help="table: one line per image; json: every result with the runtime; csv: one row per label (default: table)",
    )
    p.add_argument("--batch-size", type=at_least(1), default=32, help="images per batch (default: 32)")
    p.add_argument(
        "--threshold",
        type=float,
        help="multi-label: predict every label whose score reaches this (0-1) instead of the thresholds tuned "
        "on the run's validation split",
    )
    add_inference_arguments(p, "predict")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "explain",
        help="the photo, the model's input and a heat map of what drove the prediction, beside the top-5",
        description="Heat maps by --method: auto picks attention rollout for ViTs whose tokens are image patches, "
        "Grad-CAM on the token grid for hybrids and convolutional tokenizers (whose tokens already mix much of "
        "the image, so rollout cannot place evidence), and gradient saliency for models without tokens.",
    )
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+", help="image files, folders or globs")
    p.add_argument("--out", required=True, help="PNG file for one image, else a folder (one IMAGE_NAME.png each)")
    p.add_argument(
        "--method",
        default="auto",
        choices=["auto", "rollout", "gradcam", "saliency"],
        help="heat map (default: auto, as above)",
    )
    p.add_argument("--topk", type=at_least(1), default=5, help="predictions listed beside the map (default: 5)")
    add_inference_arguments(p, "explain")
    p.set_defaults(func=cmd_explain)

    from .eval.agreement import MIN_AGREEMENT
    from .serve.limits import ServeLimits

    p = sub.add_parser("serve", help="HTTP API and web page for a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: loopback only; the API has no authentication)"
    )
    p.add_argument("--port", type=at_least(0), default=8000, help="TCP port (default: 8000; 0: any free port)")
    add_inference_arguments(p, "serve")
    p.add_argument("--topk", type=at_least(1), default=5, help="labels returned per image")
    limits = p.add_argument_group("limits (each protects the server from one abusive or broken client)")
    for f in dataclasses.fields(ServeLimits):
        low, unit = f.metadata["at_least"], f.metadata["unit"]
        limits.add_argument(
            "--" + f.metadata["flag"].replace("_", "-"),
            type=positive_float if low is None else at_least(low),
            default=f.default / unit if unit != 1 else f.default,
            help=f"{f.metadata['help']} (default: %(default)g)",
        )
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
    p = data_sub.add_parser(
        "pack",
        help="an image folder as parquet shards (Hugging Face layout) that stream well",
        description="Pack DIR/<class>/* or DIR/{train,val,test}/<class>/* into OUT/data/<split>-*.parquet; "
        "train on it with --data OUT.",
    )
    p.add_argument("folder")
    p.add_argument("out")
    p.add_argument(
        "--size", type=at_least(1), help="shrink larger images to this shorter side (default: keep every image)"
    )
    p.add_argument(
        "--quality", type=within(1, 100), default=95, help="JPEG quality of resized images, 1-100 (default: 95)"
    )
    p.add_argument("--shard-mb", type=positive_float, default=256, help="image bytes per shard (default: 256)")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of failing")
    p.set_defaults(func=cmd_data_pack)

    p = sub.add_parser(
        "export", help="export a checkpoint as ONNX or as a Hugging Face folder (with a model card README.md)"
    )
    p.add_argument("checkpoint")
    p.add_argument(
        "out",
        help="the .onnx file, or a folder to write RUN.onnx (RUN-int8.onnx) into; with --format hf, the folder",
    )
    p.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "hf"],
        help="onnx: one .onnx file; hf: a Hugging Face folder with a model card (default: onnx)",
    )
    p.add_argument("--opset", type=at_least(7), default=18, help="ONNX opset version (default: 18)")
    quant = p.add_argument_group(
        "INT8 quantization (ONNX): calibrated on the run's own training images, checked on the split it reported"
    )
    quant.add_argument("--quantize", choices=["int8"], help="static post-training INT8 quantization")
    quant.add_argument("--calibration-images", type=at_least(1), default=256, help="training images (default: 256)")
    quant.add_argument(
        "--min-agreement",
        type=float,
        default=MIN_AGREEMENT,
        help="refuse an export whose top-1 agreement with fp32 is below this fraction (default: %(default)g)",
    )
    quant.add_argument("--force", action="store_true", help="write the export even below --min-agreement")
    quant.add_argument("--data", help="data to calibrate and check on (default: what the checkpoint was trained on)")
    quant.add_argument("--data-dir", help=DATA_DIR_HELP)
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


FILE_SYSTEM_REFUSALS = {
    errno.EACCES: "permission denied; check its permissions",
    errno.EPERM: "operation not permitted; check its permissions",
    errno.EROFS: "read-only file system; write somewhere else",
    errno.ENOSPC: "no space left on the device; free some or write somewhere else",
    errno.EDQUOT: "disk quota exceeded; free some space or write somewhere else",
}


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
