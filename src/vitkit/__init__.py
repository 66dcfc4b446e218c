"""vitkit: train, fine-tune, evaluate, explain, export and serve Vision Transformers and all-MLP
image classifiers."""

__version__ = "0.1.0"

from .api import Classifier, evaluate, load, lr_find, train  # noqa: E402

__all__ = ["train", "lr_find", "evaluate", "load", "Classifier", "__version__"]
