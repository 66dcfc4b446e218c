"""`vitkit export`: a checkpoint as an ONNX file (INT8 optionally) or a Hugging Face folder, with the
options declared once for the command and for `export_int8`'s defaults."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from ..errors import VitkitError
from ..eval.checkpoint import DATA_DIR_HELP
from ..options import option
from ..runtime import MIN_AGREEMENT
from .onnx import DEFAULT_OPSET

INT8_GROUP = "INT8 quantization (ONNX)"
# the flags' groups: export's own options, and the INT8 ones with what they are checked on
GROUP_TITLES = {
    "export": None,
    INT8_GROUP: "calibrated on the run's own training images, checked on the split it reported",
}
_export = partial(option, group="export", commands=("export",))
_int8 = partial(option, group=INT8_GROUP, commands=("export",))


@dataclass
class ExportOptions:
    """What `vitkit export` writes: the format, and for INT8 what it is calibrated and checked on."""

    format: str = _export(
        "onnx", "onnx: one .onnx file; hf: a Hugging Face folder with a model card", choices=("onnx", "hf")
    )
    opset: int = _export(DEFAULT_OPSET, "ONNX opset version", at_least=7)
    quantize: str | None = _int8(None, "static post-training INT8 quantization", choices=("int8",))
    calibration_images: int = _int8(256, "training images", at_least=1)
    min_agreement: float = _int8(
        MIN_AGREEMENT, "refuse an export whose top-1 agreement with fp32 is below this fraction"
    )
    force: bool = _int8(False, "write the export even below --min-agreement")
    data: str | None = _int8(None, "data to calibrate and check on (default: what the checkpoint was trained on)")
    data_dir: str | None = _int8(None, DATA_DIR_HELP)


def check_writable(out: str, what: str) -> None:
    """Refuse, before any work, an output whose nearest existing folder this process cannot write to
    (a read-only run folder, a mounted dataset)."""
    target = Path(out).absolute()
    if target.is_file() and what == "folder":
        raise VitkitError(f"{out} is a file: the {what} to write must be a new or existing folder")
    folder = next(p for p in (target if target.is_dir() else target.parent, *target.parents) if p.exists())
    if not os.access(folder, os.W_OK | os.X_OK):
        raise VitkitError(f"cannot write {out}: {folder} is read-only; write the {what} somewhere else")


def export_checkpoint(checkpoint: str, out: str, options: ExportOptions) -> dict:
    """Write the export `options` ask for to `out` (an ONNX file, or a folder to write RUN.onnx into; with
    format hf, the folder), notes to stderr; returns what `vitkit export` prints."""
    from ..inference import checkpoint_name, load

    if options.format == "onnx" and os.path.isdir(out):  # as cp takes a folder: into it, named after the checkpoint
        name = checkpoint_name(Path(checkpoint)) + ("-int8" if options.quantize else "")
        out = os.path.join(out, f"{name}.onnx")
    check_writable(out, "file" if options.format == "onnx" else "folder")
    if options.quantize and options.format != "onnx":
        raise VitkitError("--quantize int8 applies to --format onnx")
    if options.quantize:
        from .int8 import export_int8

        int8 = {k: v for k, v in asdict(options).items() if k not in ("format", "opset", "quantize")}
        report = export_int8(checkpoint, out, **int8)
        print(f"vitkit export: {report['summary']} -> {report['report']}", file=sys.stderr)
        return {"onnx": report["onnx"], "agreement": report["agreement"]}
    clf = load(checkpoint, device="cpu", backend="torch", precision="fp32")
    if options.format == "onnx":
        from .onnx import export_onnx

        return {"onnx": out, "max_abs_logit_diff": export_onnx(clf, out, opset=options.opset)}
    from .hub import write_hf_folder

    write_hf_folder(clf, Path(checkpoint), out, title=clf.name, load_as=out)
    if clf.preprocessing.decode_size is not None:
        print(
            f"vitkit export: note: {checkpoint} decodes images at {clf.preprocessing.decode_size} px and "
            f"resizes them to {clf.image_size} px on the device; the exported processor resizes in one step, "
            "so its scores differ slightly from vitkit's",
            file=sys.stderr,
        )
    return {"hf": out}
