"""INT8 ONNX export: static post-training quantization with ONNX Runtime, calibrated on the run's own
training images.

Static (activation scales fixed from calibration) rather than dynamic quantization, so no scale is
computed per batch at run time; QDQ format, which ONNX Runtime fuses into integer kernels. Only the
matrix multiplications are quantized: they hold nearly all the arithmetic, while quantizing the
softmax, normalisation and residual additions costs agreement for little speed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_path
from .onnx import _require, export_onnx

QUANTIZED_OPS = ["MatMul", "Gemm"]


def calibration_batches(split, normalize, count: int, seed: int) -> list[np.ndarray]:
    """`count` images of `split` drawn reproducibly with `seed`, normalised by `normalize`, in batches of 32:
    what INT8 quantization calibrates on."""
    from ..data.loader import BatchLoader

    chosen = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count]
    loader = BatchLoader(split.subset(chosen.sort().values), 32, shuffle=False)
    return [normalize(images).numpy() for images, _ in loader.batches()]


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over prepared batches."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self._feeds = iter([{input_name: batch} for batch in batches])

    def get_next(self):
        return next(self._feeds, None)


def quantize_int8(
    classifier, calibration: list[np.ndarray], workdir: str | os.PathLike, fp32: Path | None = None
) -> Path:
    """The classifier's model as INT8 ONNX in `workdir`, calibrated on `calibration` (normalised float
    NCHW batches), carrying the fp32 export's metadata with "precision": "int8". `fp32`: the classifier's
    fp32 export when there is one already (exporting is most of the time this takes)."""
    _require("onnxruntime", "export")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    workdir = Path(workdir)
    prepared, int8 = workdir / "prepared.onnx", workdir / "int8.onnx"
    if fp32 is None:
        fp32 = workdir / "fp32.onnx"
        export_onnx(classifier, fp32)
    quant_pre_process(str(fp32), str(prepared))
    reader = type("Reader", (_Calibration, CalibrationDataReader), {})("pixel_values", calibration)
    quantize_static(
        str(prepared),
        str(int8),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=QUANTIZED_OPS,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    save_with_metadata(int8, int8, {**read_metadata(fp32), "precision": "int8"})
    return int8


def read_metadata(path: Path) -> dict:
    onnx = _require("onnx", "export")
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props.get("vitkit", "{}"))


def save_with_metadata(path: Path, out_path: str | os.PathLike, meta: dict) -> Path:
    """Copy the ONNX model at `path` to `out_path` (atomically) with `meta` as its vitkit metadata."""
    onnx = _require("onnx", "export")
    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != "vitkit"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "vitkit", json.dumps(meta)
    with atomic_path(out_path) as tmp:
        onnx.save_model(proto, str(tmp))
    return Path(out_path)
