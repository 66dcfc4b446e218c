"""vitkit: train, fine-tune, evaluate, explain, export and serve Vision Transformers and all-MLP
image classifiers."""

__version__ = "0.1.0"

from .api import Classifier, check, evaluate, load, lr_find, top_losses, train  # noqa: E402

__all__ = ["train", "lr_find", "check", "evaluate", "top_losses", "load", "Classifier", "__version__"]
