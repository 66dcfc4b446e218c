"""vitkit: train, fine-tune, evaluate, explain, export and serve Vision Transformers and all-MLP
image classifiers."""

__version__ = "0.1.0"

# The package vitkit.check is loaded first, so that binding the function vitkit.check (below) is final: a
# subpackage's first import would otherwise replace the function by the module.
from . import check as _check_package  # noqa: E402, F401
from .api import Classifier, check, evaluate, load, lr_find, top_losses, train  # noqa: E402

__all__ = ["train", "lr_find", "check", "evaluate", "top_losses", "load", "Classifier", "__version__"]
