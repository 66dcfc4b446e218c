"""Running a trained model on images: `load` makes a checkpoint a `Classifier` in the precision and on the
backend `precision.py` chooses (PyTorch, or ONNX Runtime on an export cached by `onnx_cache.py`), and
`predict.py` turns files, folders, globs and images in memory into its predictions.

A prediction: `Classifier.predict` -> `predict.collect_images` (inputs as decode steps) ->
`predict.predict_images` (batches) -> `Classifier.predict_tensor` (the model) -> `predict.classifier_predictions`.
Nothing here imports `vitkit.training`."""

from .classifier import Classifier
from .loading import checkpoint_folder, checkpoint_name, load
from .onnx_cache import cache_dir, cached_onnx_export, onnx_cache_path
from .onnx_model import OnnxModel
from .precision import InferenceOptions, choose_precision, default_backend

__all__ = [
    "Classifier",
    "InferenceOptions",
    "OnnxModel",
    "cache_dir",
    "cached_onnx_export",
    "checkpoint_folder",
    "checkpoint_name",
    "choose_precision",
    "default_backend",
    "load",
    "onnx_cache_path",
]
