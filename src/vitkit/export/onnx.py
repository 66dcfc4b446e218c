"""ONNX export (dynamic batch) validated against PyTorch; `vitkit.inference.OnnxModel` runs the exports."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import VitkitError
from ..fileio import atomic_path

DEFAULT_OPSET = 18
PARITY_TOLERANCE = 1e-4


def _require(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError:
        raise VitkitError(f"{module} is not installed: pip install 'vitkit[{extra}]'") from None


class TemperatureScaled(torch.nn.Module):
    """A classifier whose logits are divided by its calibration temperature."""

    def __init__(self, model: torch.nn.Module, temperature: float):
        super().__init__()
        self.model, self.temperature = model, temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def export_onnx(
    classifier, out_path: str | os.PathLike, opset: int = DEFAULT_OPSET, validate_batches: tuple[int, ...] = (1, 7)
) -> dict:
    """Write `out_path` with a dynamic batch axis and the checkpoint's labels and preprocessing (and a
    multi-label checkpoint's thresholds, also as the `thresholds` entry: {label: threshold}) in the model
    metadata; a calibrated checkpoint's temperature divides the logits in the graph (metadata: calibration
    in_graph), and its unknown-input thresholds ("ood") travel in the metadata; check ONNX Runtime against
    PyTorch on a few batch sizes. Returns the max
    |logit difference| per batch size."""
    _require("onnxscript", "export")
    onnx = _require("onnx", "export")
    if classifier.backend != "torch":
        raise VitkitError(
            f"{classifier.name} runs on {classifier.backend}: export a PyTorch-backed checkpoint "
            "(vitkit.load(..., backend='torch'))"
        )
    model = classifier.model.float().eval().cpu()
    if classifier.temperature != 1.0:  # the graph gives calibrated logits, as vitkit.load's Classifier does
        model = TemperatureScaled(model, classifier.temperature)
    size, channels = classifier.image_size, classifier.channels
    example = torch.randn(2, channels, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            verbose=False,
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: batch}},
        )
        program.optimize()
        proto = program.model_proto
        carried = {k: v for k, v in classifier.meta.items() if k != "train_config"}
        if classifier.temperature != 1.0:
            carried["calibration"] = {**carried.get("calibration", {}), "in_graph": True}
        meta = {"vitkit": json.dumps({**carried, "preprocessing": classifier.preprocessing.to_dict()})}
        if classifier.multi_label:  # for any ONNX consumer: sigmoid the logits, keep labels at their threshold
            meta["thresholds"] = json.dumps(dict(zip(classifier.class_names, classifier.thresholds)))
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save_model(proto, str(tmp))
        report = validate_onnx(tmp, model, channels, size, validate_batches)
    return report


def validate_onnx(path, model, channels: int, size: int, batches=(1, 7)) -> dict:
    ort = _require("onnxruntime", "export")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    report = {}
    gen = torch.Generator().manual_seed(0)
    for b in batches:
        x = torch.randn(b, channels, size, size, generator=gen)
        with torch.inference_mode():
            expected = model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        diff = float(np.abs(got - expected).max())
        if not diff < PARITY_TOLERANCE:
            raise VitkitError(
                f"ONNX export of {path} differs from PyTorch by {diff:.2e} at batch {b} "
                f"(tolerance {PARITY_TOLERANCE}); please report this model"
            )
        report[f"batch_{b}"] = diff
    return report
