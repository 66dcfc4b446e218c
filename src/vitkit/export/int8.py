"""`vitkit export --quantize int8`: a checkpoint as an INT8 ONNX model, refused below the agreement with
fp32 that vitkit trusts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..data.loader import AUTO_WORKERS, BatchLoader
from ..errors import VitkitError
from ..eval.agreement import MIN_AGREEMENT, agreement_report, describe, predicted_classes
from ..eval.checkpoint import checkpoint_split
from ..fileio import write_json
from ..inference import OnnxModel, load
from .checkpoint import ExportOptions
from .quantize import calibration_batches, quantize_int8, read_metadata, save_with_metadata


def export_int8(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    data: str | None = None,
    min_agreement: float | None = None,
    force: bool = False,
    calibration_images: int = ExportOptions.calibration_images,
    seed: int = 0,
    **data_options: Any,
) -> dict[str, Any]:
    """Write `out`: the checkpoint as an INT8 ONNX model (static post-training quantization, calibrated on
    `calibration_images` of its own training images drawn with `seed`), with its preprocessing, labels
    and the agreement report in the model's metadata and beside it (OUT.agreement.json). The report is
    the INT8 model's top-1 agreement with fp32 and the accuracy change on the split its run reported;
    below `min_agreement` (default `MIN_AGREEMENT`) the export is refused, unless `force`."""
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
    data, dataset, split, part = checkpoint_split(clf, data, None, data_options)
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
