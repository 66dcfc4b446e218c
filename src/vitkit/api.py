"""The Python API behind the command line: train, evaluate, load, predict."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from .data.loader import AUTO_WORKERS, BatchLoader
from .data.prepare import DataOptions, dataset_defaults, prepare_data
from .data.preprocess import Preprocessing
from .errors import MissingFile, VitkitError
from .eval.loop import evaluate_loader
from .fileio import settled_dir, write_json
from .options import check_known, typed_values
from .runtime import Bf16Autocast, InferenceOptions, choose_precision, resolve_device


def train(
    resume: str | os.PathLike | None = None,
    callbacks=(),
    started: float | None = None,
    config: str | os.PathLike | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train a model and write a run folder; returns results.json's content plus `run_dir`.

    `vitkit.train(data="cifar10", model="vit_tiny_patch4_32", epochs=20)`; any TrainConfig field is an
    option, a `preset` fills in the seed's values, `config` is a YAML file of options under the ones given
    here (see `vitkit.training.config` for the precedence). `resume=RUN_DIR` continues an interrupted run.
    `callbacks`: objects with any of on_train_begin(run_dir, config, history), on_epoch_end(epoch,
    metrics), on_train_end(results), on_train_failed(error) (see vitkit.training.callbacks).
    """
    from .training import resume_config
    from .training import train as run_training
    from .training.config import explicit_values, make_config

    cfg = resume_config(resume, **explicit_values(config, options)) if resume else make_config(config, **options)
    return run_training(cfg, callbacks, started)


def check(data: str, started: float | None = None, quiet: bool = False, **options: Any) -> dict[str, Any]:
    """Find what is wrong with a dataset before it is trained on, and write the report to `out` (default
    ./check): file problems, exact and near duplicates (leaks between splits first), balance, and likely
    label errors from a quick k-fold training within `time_budget` minutes. Takes `vitkit check`'s options
    (`labels`, `time_budget`, `out`, `folds`, `label_errors`, ...); returns check.json's content plus `out`."""
    from .check import CheckOptions, run_check
    from .options import check_options

    check_known(options, CheckOptions, "check options")
    config = CheckOptions(data=str(data), **typed_values(options, CheckOptions))
    check_options(config)
    return run_check(config, started=started, quiet=quiet)


def lr_find(
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    plot: str | os.PathLike | None = "lr_find.png",
    **options: Any,
) -> dict[str, Any]:
    """Learning-rate range test on a fresh model built from training options (as `train` takes them):
    the rate grows exponentially from start_lr to end_lr over at most `steps` steps, stopping when the
    loss diverges. Returns the rates, losses and `suggested_lr` (steepest descent of the smoothed
    loss); `plot` is the loss-against-rate figure to write (None: none)."""
    from .training.config import make_config
    from .training.lr_find import lr_find as sweep

    result = sweep(make_config(**options), steps, start_lr, end_lr)
    if plot is not None:
        from .viz.plots import plot_lr_find

        plot_lr_find(result.lrs, result.losses, result.smoothed, result.suggested_lr, plot)
    return {**result.to_dict(), "plot": None if plot is None else str(plot)}


def default_backend() -> str:
    """ONNX Runtime for fp32 on a CPU when installed (exact to 1e-6 and faster than eager PyTorch there:
    benchmarks/results/inference.json), else PyTorch."""
    import importlib.util

    has_ort = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnxscript"))
    return "onnxruntime" if has_ort and not torch.cuda.is_available() else "torch"


class Classifier:
    """A trained model with its preprocessing and class names, ready for images. `model` is a PyTorch
    module or an ONNX Runtime session wrapper; both take normalised float NCHW and return logits.
    `precision` is what the model runs in (fp32, bf16 under autocast, or int8 for a quantized ONNX
    export) and `precision_reason` why; `folder` the checkpoint folder it came from (None for a file)."""

    def __init__(
        self,
        model,
        meta: dict,
        device: str = "auto",
        precision: str = "fp32",
        name: str = "model",
        precision_reason: str = "",
        folder: Path | None = None,
    ):
        self.name = name  # what the checkpoint is called on screen: its run folder, file or hub id
        self.folder = folder
        is_torch = isinstance(model, torch.nn.Module)
        self.device = resolve_device(device) if is_torch else torch.device("cpu")
        self.model = model.to(self.device).eval() if is_torch else model
        self.precision = precision if is_torch else model.meta.get("precision", "fp32")
        self.precision_reason = precision_reason or f"{self.precision} as exported"
        # what predictions run through: the model itself, or under bf16 autocast
        self.runner = Bf16Autocast(self.model, self.device) if self.precision == "bf16" else self.model
        self.meta = meta
        config = getattr(model, "config", None)
        self.preprocessing = Preprocessing.from_dict(
            meta.get("preprocessing") or {}, config and config.image_size, config and config.in_chans
        )
        self.image_size, self.channels = self.preprocessing.image_size, self.preprocessing.channels
        self.class_names: list[str] = meta.get("class_names") or [str(i) for i in range(config.num_classes)]
        # multi-label: sigmoid scores, and a label is predicted when its score reaches its threshold
        self.multi_label = bool(meta.get("multi_label"))
        self.thresholds: list[float] | None = meta.get("thresholds") if self.multi_label else None
        if self.multi_label and (self.thresholds is None or len(self.thresholds) != len(self.class_names)):
            raise VitkitError(f"{name} is multi-label but has no threshold per label: re-export it from its run")
        # decoded uint8 batches -> the model's input (resize, scale, normalise): `input_transform.for_inference`
        self.input_transform = self.preprocessing.batch_augment()

    @property
    def backend(self) -> str:
        return "torch" if isinstance(self.model, torch.nn.Module) else "onnxruntime"

    @property
    def summary(self) -> str:
        """The recipe or model it was trained as (when recorded), family, input size and classes."""
        from .training.config import model_label

        trained = self.meta.get("train_config") or {}
        parts = [model_label(trained) if trained.get("preset") else trained.get("model"), self.meta.get("family")]
        parts += [f"{self.image_size} px", f"{len(self.class_names)} classes"]
        return ", ".join(str(part) for part in parts if part)

    @property
    def runtime(self) -> dict:
        """Where and how it runs, as the serve banner, /health and predict's JSON report it."""
        return {
            "backend": self.backend,
            "device": str(self.device),
            "precision": self.precision,
            "precision_reason": self.precision_reason,
        }

    def predict(
        self, inputs, topk: int = 5, batch_size: int = 32, threshold: float | None = None
    ) -> dict | list[dict]:
        """Top-k labels for images, decoded, resized and cropped exactly as `vitkit predict` does it; for a
        multi-label classifier every label whose score reaches its threshold, best first (`topk` unused):
        the thresholds tuned on its validation split, or `threshold` for every label.

        `inputs`: a file path, a folder (searched for images) or a glob; a PIL image; a numpy array of
        uint8 pixels (HxWx3 RGB or HxW grey); a uint8 torch tensor (CxHxW, or NxCxHxW for several); or a
        list mixing them. Results are the "results" `vitkit predict --format json` prints: {"path": ...,
        "predictions": [{"label", "score"}, ...]} best first, with "input": n (the result's position)
        instead of "path" for an image in memory, and "error" instead of "predictions" for one that
        cannot be decoded. One image gives one result; a list, folder, glob or NxCxHxW batch a list.
        `classifier(inputs)` is the same call.
        """
        from .predict import collect_images, is_one_image, predict_images

        images = collect_images(inputs, self.preprocessing)
        results = predict_images(self, images, topk, batch_size, progress=False, threshold=threshold)
        single = not isinstance(inputs, (list, tuple)) and is_one_image(inputs)
        return results[0] if single else results

    __call__ = predict

    @torch.inference_mode()
    def predict_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (multi-label: each label's sigmoid score) for uint8 NCHW images already
        decoded to the preprocessing's square (`Preprocessing.load_tensor` or `image_tensor`), any channel
        count. Photos of any other size go through `predict`, which resizes and crops them first: resizing
        them here would squash them."""
        side = self.preprocessing.square_size
        if images.ndim != 4 or images.shape[-2:] not in ((side, side), (self.image_size, self.image_size)):
            raise VitkitError(
                f"predict_tensor takes NxCx{side}x{side} images as preprocessing decodes them, got "
                f"{tuple(images.shape)}; pass photos of any size to predict(), which resizes and crops them"
            )
        logits = self.runner(self.input_transform.for_inference(images.to(self.device))).float()
        return (logits.sigmoid() if self.multi_label else logits.softmax(-1)).cpu()


def checkpoint_name(path: Path) -> str:
    """A checkpoint's name for people: its run folder's (not best/ or last/), or the .onnx file's."""
    path = path.resolve()
    if path.suffix == ".onnx":
        return path.stem
    return path.parent.name if path.name in ("best", "last") else path.name


def checkpoint_folder(path: Path) -> Path:
    """The folder holding the weights: a run's best/ when given the run, else `path`."""
    best = settled_dir(path / "best")
    return best if (best / "config.json").is_file() else path


def load(
    checkpoint: str | os.PathLike,
    device: str = "auto",
    backend: str = "auto",
    precision: str = "auto",
    threads: int = 0,
    notice: Callable[[str], None] | None = None,
) -> Classifier:
    """Load a checkpoint folder (a run's best/ or last/, the run folder itself, or a Hugging Face folder
    `vitkit export --format hf` wrote), an exported .onnx file (fp32 or INT8), or a hub id (owner/name: a
    model pushed with `vitkit push`, or a Hugging Face or timm ViT classifier; through huggingface_hub and
    its cache).

    precision="auto" runs bf16 where the hardware multiplies it natively (AMX, AVX512-BF16, CUDA) and the
    checkpoint's bf16 agreement with fp32 on held-out images, recorded at the end of its training run or
    by `vitkit eval --precision bf16`, reaches `MIN_AGREEMENT`; fp32 elsewhere, and for a checkpoint with
    no such record. "fp32" and "bf16" are taken as asked. The
    choice and its reason are `Classifier.precision` and `.precision_reason`. An .onnx file runs in the
    precision it was exported in. backend="auto" takes PyTorch for bf16 and ONNX Runtime (when
    installed) for fp32 on a CPU, whichever `default_backend` says; "onnxruntime" exports a checkpoint
    folder once into the user cache folder (`onnx_cache_path`); with "auto", a failed export (a read-only
    cache folder, an exporter error) leaves the model on PyTorch. threads: CPU threads (0: every core).
    A multi-label checkpoint saved before its first validation (a run's early last/) predicts at 0.5 for
    every label until its thresholds are tuned. notice: called with a line before that one-time export,
    which takes seconds, and with what was assumed or fallen back to (default: a warning)."""
    from .eval.agreement import bf16_guard
    from .export.onnx import OnnxModel
    from .models.io import check_preprocessing
    from .pretrained import download_checkpoint, is_hub_id, load_classifier_folder

    InferenceOptions(device, backend, precision, threads).validate()
    if threads:
        torch.set_num_threads(threads)
    path = Path(checkpoint)
    if not path.exists() and is_hub_id(checkpoint):
        name, path = str(checkpoint), download_checkpoint(str(checkpoint))
    elif not path.exists():
        raise MissingFile(f"checkpoint {path} does not exist")
    elif path.suffix == ".onnx":
        if precision == "bf16":
            raise VitkitError(f"--precision bf16: {path} runs in the precision it was exported in; use auto or fp32")
        onnx_model = OnnxModel(path, threads)
        if not onnx_model.meta.get("preprocessing"):
            raise VitkitError(f"{path} has no vitkit metadata: export it with `vitkit export`")
        check_preprocessing(
            onnx_model.meta["preprocessing"],
            lambda problem: VitkitError(f"{path}: its vitkit metadata's {problem}; export it again (vitkit export)"),
        )
        return Classifier(onnx_model, onnx_model.meta, name=checkpoint_name(path))
    else:
        name, path = checkpoint_name(path), checkpoint_folder(path)
    chosen, why = choose_precision(precision, resolve_device(device))
    if chosen == "bf16" and backend == "onnxruntime":
        if precision == "bf16":
            raise VitkitError("--precision bf16 runs on --backend torch; ONNX Runtime runs the fp32 export")
        chosen, why = "fp32", "auto: fp32, as --backend onnxruntime runs the fp32 export"
    if chosen == "bf16" and precision == "auto":
        trusted, guard = bf16_guard(path, str(checkpoint))
        chosen, why = ("bf16", f"{why}; {guard}") if trusted else ("fp32", f"auto: fp32, as {guard}")
    asked_backend = backend
    if backend == "auto":
        backend = "torch" if chosen == "bf16" else default_backend()
    model, meta = load_classifier_folder(path)
    meta = _with_thresholds(meta, model.config.num_classes, name, notice)
    if backend == "onnxruntime":
        try:
            onnx_path = cached_onnx_export(path, Classifier(model, meta, "cpu"), notice)
            return Classifier(OnnxModel(onnx_path, threads), meta, name=name, precision_reason=why, folder=path)
        except Exception as e:  # with auto, PyTorch runs the same model: the notice says why it does
            if asked_backend != "auto":
                raise
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            _tell(notice, f"running {name} on PyTorch: the ONNX export for ONNX Runtime failed ({reason})")
    return Classifier(model, meta, device, chosen, name, why, path)


def _tell(notice: Callable[[str], None] | None, line: str) -> None:
    """`line` to the caller's notice, else as a warning (a Python caller sees it once)."""
    if notice is not None:
        notice(line)
    else:
        import warnings

        warnings.warn(line, stacklevel=3)


def _with_thresholds(meta: dict, num_classes: int, name: str, notice: Callable[[str], None] | None) -> dict:
    """A multi-label checkpoint's metadata with a threshold per label: one saved before its first
    validation has none tuned yet (recorded as 0.5 and thresholds_tuned false, or, before vitkit recorded
    that, as none) and predicts at 0.5, which `notice` hears."""
    from .pretrained import UNTUNED_THRESHOLD

    if not meta.get("multi_label"):
        return meta
    if meta.get("thresholds") is None:
        meta = {**meta, "thresholds": [UNTUNED_THRESHOLD] * num_classes, "thresholds_tuned": False}
    if meta.get("thresholds_tuned") is False:
        _tell(
            notice,
            f"{name} was saved before its first validation, so its thresholds are not tuned yet: every label "
            f"is predicted at {UNTUNED_THRESHOLD}",
        )
    return meta


def cached_onnx_export(checkpoint_dir: Path, clf: Classifier, notice: Callable[[str], None] | None = None) -> Path:
    """The fp32 ONNX export of a checkpoint folder's classifier `clf`: exported on first use into the user
    cache (`onnx_cache_path`), then read from there; `notice` hears of the export before it starts."""
    from .export.onnx import export_onnx

    onnx_path = onnx_cache_path(checkpoint_dir)
    if not onnx_path.is_file():
        if notice is not None:
            notice(
                f"exporting {checkpoint_dir} to ONNX for ONNX Runtime, once per checkpoint (cached in "
                f"{onnx_path.parent}; --backend torch runs without it)"
            )
        try:
            export_onnx(clf, onnx_path)
        except OSError as e:
            raise VitkitError(
                f"cannot write the ONNX export of {checkpoint_dir} into {onnx_path.parent} ({e.strerror}): point "
                "XDG_CACHE_HOME at a writable folder, or use --backend torch"
            ) from None
    return onnx_path


def cache_dir() -> Path:
    """Where vitkit keeps files it can rebuild: $XDG_CACHE_HOME/vitkit, else ~/.cache/vitkit."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitkit"


def onnx_cache_path(checkpoint_dir: Path) -> Path:
    """The ONNX export of a checkpoint, keyed by the content of its weights and config, so a checkpoint is
    never written into (a read-only run folder works) and a retrained one never reuses a stale export. A
    folder downloaded from the hub may hold the weights under another name, and its preprocessing apart."""
    from .export.onnx import DEFAULT_OPSET

    digest = hashlib.sha256(f"opset={DEFAULT_OPSET} torch={torch.__version__}\n".encode())
    for name in ("config.json", "model.safetensors", "pytorch_model.bin", "preprocessor_config.json"):
        if not (checkpoint_dir / name).is_file():
            continue
        digest.update(name.encode())
        with open(checkpoint_dir / name, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return cache_dir() / "onnx" / f"{digest.hexdigest()[:32]}.onnx"


# what the data to evaluate on keeps of the run's data options when it is other data
KEPT_FOR_OTHER_DATA = ("data_dir", "memory_limit_gb", "skip_bad_images", "seed")


def _same_source(given: str | None, saved: str | None) -> bool:
    """Whether a --data or --labels value names what the run recorded (paths compared resolved)."""
    if given is None or given == saved:
        return True
    return saved is not None and Path(given).exists() and Path(given).resolve() == Path(saved).resolve()


def _checkpoint_split(clf: Classifier, data: str | None, split: str | None, data_options: dict):
    """(data, dataset, split name, split) a checkpoint is judged on: see `_scored_images`."""
    return _scored_images(clf, data, split, data_options)[:4]


def _scored_images(clf: Classifier, data: str | None, split: str | None, data_options: dict):
    """(data, dataset, split name, split, source, own) a checkpoint is judged on; `own`: its run's data.
    On its run's own data (the default), the run's split: by default the one it reported on (test, or val
    when the data has no test). On other data, the data's own splits and nothing held out: by default
    every image of a folder or table ("all"), a named dataset's test split. `source` says which images,
    for people."""
    from .data.builtin import BUILTIN
    from .data.hf import is_hf_source
    from .data.splits import join_splits

    fields = {f.name for f in dataclasses.fields(DataOptions)}
    check_known(data_options, DataOptions, "data options")
    saved = clf.meta.get("train_config", {})
    given = {k: v for k, v in data_options.items() if v is not None}
    other = not (_same_source(data, saved.get("data")) and _same_source(given.get("labels"), saved.get("labels")))
    options = {k: saved[k] for k in (KEPT_FOR_OTHER_DATA if other else fields) if k in saved}
    if other and given.get("labels"):
        options["multi_label"] = clf.multi_label
    options.update(given)
    if data is not None:
        options["data"] = data
    if "data" not in options:
        raise VitkitError("--data is required: the checkpoint does not say which data it was trained on")
    if split not in (None, "all", "train", "val", "test"):
        raise VitkitError(f"--split {split!r}: use all, train, val or test")
    if split == "all" and not other:
        raise VitkitError("--split all is for other data than the run's: its own data has a held-out split to score")
    options.setdefault("val_split", dataset_defaults(options["data"]).get("val_split", 0.1))
    dataset, _ = prepare_data(DataOptions(**typed_values(options, DataOptions)), clf.preprocessing, not other)
    if dataset.num_classes != len(clf.class_names):
        raise VitkitError(
            f"the checkpoint has {len(clf.class_names)} classes but {options['data']} has "
            f"{dataset.num_classes}: evaluate on the data it was trained for, or fine-tune it first"
        )
    if dataset.multi_label != clf.multi_label:
        kinds = {True: "multi-label", False: "single-label"}
        raise VitkitError(
            f"the checkpoint is {kinds[clf.multi_label]} but {options['data']} is {kinds[dataset.multi_label]}: "
            "evaluate on the data it was trained for"
        )
    parts = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
    parts = {name: part for name, part in parts.items() if part is not None and len(part)}
    named = options["data"] in BUILTIN or (is_hf_source(options["data"]) and not options.get("labels"))
    if split is None:
        split = "test" if "test" in parts and (named or not other) else ("all" if other else "val")
    if split == "all":
        part = join_splits(list(parts.values()))
    elif split not in parts:
        raise VitkitError(f"{options['data']} has no {split} split: pass --split {' or '.join(['all', *parts])}")
    else:
        part = parts[split]
    where = options["data"] + (f" labelled by {options['labels']}" if options.get("labels") else "")
    if not other:
        source = f"{where}, the run's own {split} split"
    elif split == "all":
        source = f"every image of {where}" + (f" ({' + '.join(parts)} splits)" if len(parts) > 1 else "")
    else:
        source = f"the {split} split of {where}"
    return options["data"], dataset, split, part, source, not other


def evaluate(
    checkpoint: str | os.PathLike,
    data: str | None = None,
    split: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
    flip_tta: bool = False,
    precision: str = "fp32",
    crop_tta: bool = False,
    **data_options: Any,
) -> dict[str, Any]:
    """Recompute the metrics of a checkpoint on its run's data, by default on the split the run reported
    on (test, or val when the data has no test split); or score it on other `data`: by default every
    image of a folder or label table (split "all"), a named dataset's test split; `split` picks one of
    the data's own splits (train, val, test). The report's `source` says which images. `flip_tta` averages
    each image's logits with its mirror image's (for data whose classes survive a horizontal flip);
    `crop_tta` adds two crops moved a pixel diagonally (multi-crop TTA, single-label models).

    precision="fp32" (the default) reproduces the metrics a run reported, which are computed in fp32
    whatever the training precision. "bf16" (or "auto" where it picks bf16) evaluates under bf16 and adds
    `agreement`: top-1 agreement with fp32 (whole label sets for a multi-label model) and the accuracy
    change, also recorded in the checkpoint folder for `--precision auto` when the split is held out. An
    INT8 .onnx export reports the agreement measured when it was exported."""
    from .eval.agreement import bf16_agreement, record_bf16_agreement

    clf = load(checkpoint, device, backend="torch", precision=precision)
    data, dataset, split, part, source, own = _scored_images(clf, data, split, data_options)
    scored = {"split": split, "data": data, "source": source, "run_data": own}
    loader = BatchLoader(part, batch_size, shuffle=False, device=clf.device, workers=AUTO_WORKERS)
    if clf.multi_label:  # mAP, and F1 at the thresholds the checkpoint was tuned to on its validation split
        from .eval.multilabel import evaluate_multilabel

        if crop_tta:
            raise VitkitError("--crop-tta is for single-label models; multi-label evaluation takes --flip-tta")

        metrics, _, _ = evaluate_multilabel(
            clf.runner, loader, clf.input_transform, clf.class_names, clf.thresholds, flip_tta
        )
        report = {**scored, "flip_tta": flip_tta, "precision": clf.precision, **metrics}
    else:
        metrics = evaluate_loader(
            clf.runner, loader, clf.input_transform, dataset.num_classes, flip_tta=flip_tta, crop_tta=crop_tta
        )
        report = {**scored, "flip_tta": flip_tta, "crop_tta": crop_tta, "precision": clf.precision}
        report.update(metrics.compute(dataset.class_names))
    if clf.precision == "bf16":
        agreement = bf16_agreement(clf.model, loader, clf.input_transform.for_inference, split, clf.thresholds)
        report["agreement"] = agreement
        record_bf16_agreement(clf.folder, {**agreement, "data": data}, notice=lambda line: print(line, file=sys.stderr))
    elif "agreement" in clf.meta:
        report["agreement"] = clf.meta["agreement"]
    return report


def top_losses(
    checkpoint: str | os.PathLike,
    count: int = 16,
    out: str | os.PathLike | None = "top_losses.png",
    data: str | None = None,
    split: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
    flip_tta: bool = False,
    **data_options: Any,
) -> dict[str, Any]:
    """The checkpoint's most confident mistakes on a split (by default the one its run reported on; on
    other `data`, the images `evaluate` scores there):
    the `count` misclassified images with the highest loss, highest first. Each item has the image's
    `index` in the split (and `path` when the split is read from files), the true and predicted class,
    the predicted class's probability, the true class's probability and the loss; `out` is the image
    grid to write (None: none); `flip_tta` as in `evaluate`."""
    from .eval.loop import per_sample_predictions

    if count < 1:
        raise VitkitError(f"--count must be at least 1, got {count}")
    clf = load(checkpoint, device, backend="torch", precision="fp32")
    if clf.multi_label:
        raise VitkitError(f"{checkpoint} is multi-label: top-losses ranks single-label mistakes; use vitkit eval")
    data, dataset, split, part, source, own = _scored_images(clf, data, split, data_options)
    loader = BatchLoader(part, batch_size, shuffle=False, device=clf.device, workers=AUTO_WORKERS)
    losses, probs = per_sample_predictions(clf.runner, loader, clf.input_transform, flip_tta)
    labels = part.labels
    predicted = probs.argmax(dim=1)
    wrong = (predicted != labels).nonzero().flatten()
    worst = wrong[losses[wrong].argsort(descending=True, stable=True)][:count]
    names, paths = dataset.class_names, getattr(part, "paths", None)
    items = [
        {
            "index": i,
            **({"path": str(paths[i])} if paths is not None else {}),
            "true": names[int(labels[i])],
            "predicted": names[int(predicted[i])],
            "probability": float(probs[i, predicted[i]]),
            "true_probability": float(probs[i, labels[i]]),
            "loss": float(losses[i]),
        }
        for i in worst.tolist()
    ]
    if out is not None and items:
        from .viz.plots import plot_image_grid
        from .viz.report import display_images

        images, _ = next(BatchLoader(part.subset(worst), len(worst), shuffle=False).batches())
        titles = [f"{x['predicted']} ({x['probability']:.2f})\ntrue: {x['true']}  loss {x['loss']:.2f}" for x in items]
        heading = f"most confident mistakes on {data} [{split}]: {len(items)} of {len(wrong)} in {len(part)} images"
        plot_image_grid(display_images(images, clf.input_transform).numpy(), titles, out, heading, [True] * len(items))
    return {
        "data": data,
        "split": split,
        "source": source,
        "run_data": own,
        "images": len(part),
        "mistakes": len(wrong),
        "items": items,
        "figure": None if out is None or not items else str(out),
    }


def export_int8(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    data: str | None = None,
    min_agreement: float | None = None,
    force: bool = False,
    calibration_images: int = 256,
    seed: int = 0,
    **data_options: Any,
) -> dict[str, Any]:
    """Write `out`: the checkpoint as an INT8 ONNX model (static post-training quantization, calibrated on
    `calibration_images` of its own training images drawn with `seed`), with its preprocessing, labels
    and the agreement report in the model's metadata and beside it (OUT.agreement.json). The report is
    the INT8 model's top-1 agreement with fp32 and the accuracy change on the split its run reported;
    below `min_agreement` (default `MIN_AGREEMENT`) the export is refused, unless `force`."""
    import tempfile

    from .eval.agreement import MIN_AGREEMENT, agreement_report, describe, predicted_classes
    from .export.onnx import OnnxModel
    from .export.quantize import calibration_batches, quantize_int8, read_metadata, save_with_metadata

    min_agreement = MIN_AGREEMENT if min_agreement is None else min_agreement
    if not 0 <= min_agreement <= 1:
        raise VitkitError(f"--min-agreement {min_agreement}: use a fraction between 0 and 1, e.g. 0.995")
    if calibration_images < 1:
        raise VitkitError(f"--calibration-images {calibration_images}: use at least 1 (a few hundred is usual)")
    clf = load(checkpoint, "cpu", backend="torch", precision="fp32")
    if clf.multi_label:
        raise VitkitError(
            f"{checkpoint} is multi-label: --quantize int8 is checked by top-1 agreement, which single-label "
            "classifiers have; export it in fp32"
        )
    data, dataset, split, part = _checkpoint_split(clf, data, None, data_options)
    calibration = calibration_batches(dataset.train, clf.input_transform.for_inference, calibration_images, seed)
    loader = BatchLoader(part, 256, shuffle=False, workers=AUTO_WORKERS)
    with tempfile.TemporaryDirectory(prefix="vitkit-int8-") as tmp:
        int8_path = quantize_int8(clf, calibration, tmp)
        reference, labels = predicted_classes(clf.model, loader, clf.input_transform.for_inference)
        candidate, _ = predicted_classes(OnnxModel(int8_path), loader, clf.input_transform.for_inference)
        report = agreement_report(reference, candidate, labels, "int8", split)
        calibrated = sum(len(batch) for batch in calibration)
        report.update(data=data, calibration={"split": "train", "images": calibrated, "seed": seed})
        if report["top1_agreement"] < min_agreement and not force:
            raise VitkitError(
                f"INT8 export refused: {describe(report)}, below --min-agreement {min_agreement:.1%}; "
                "keep the fp32 export, or pass --force to write it anyway"
            )
        save_with_metadata(int8_path, out, {**read_metadata(int8_path), "agreement": report})
    report_path = Path(out).with_suffix(".agreement.json")
    write_json(report_path, report)
    return {"onnx": str(out), "agreement": report, "report": str(report_path), "summary": describe(report)}
