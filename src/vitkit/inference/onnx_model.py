"""An exported .onnx classifier on ONNX Runtime, called like the PyTorch model it came from."""

from __future__ import annotations

import json
import os

import torch

from ..errors import VitkitError
from ..export.onnx import _require
from ..runtime import available_cores


class OnnxModel:
    """Callable like the PyTorch model (float NCHW tensor in, logits out) on ONNX Runtime."""

    def __init__(self, path: str | os.PathLike, threads: int = 0):
        ort = _require("onnxruntime", "export")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or available_cores()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable files
            raise VitkitError(f"{path} is not a loadable ONNX model ({e})") from None
        self.input_name = self.session.get_inputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        self.meta = json.loads(meta.get("vitkit", "{}"))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: x.float().cpu().numpy()})[0])

    def eval(self) -> OnnxModel:
        """An ONNX Runtime session has no training mode; like nn.Module.eval, for the shared loops."""
        return self
