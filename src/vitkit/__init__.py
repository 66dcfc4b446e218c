"""vitkit: train, fine-tune, evaluate, explain, export and serve Vision Transformers and all-MLP
image classifiers."""

__version__ = "0.1.0"

# The training subpackage is imported first so that binding the API function below is final:
# `vitkit.train(...)` is the function, `vitkit.train.config` etc. still resolve through sys.modules.
from . import train as _train_package  # noqa: E402,F401
from .api import Classifier, evaluate, load, train  # noqa: E402

__all__ = ["train", "evaluate", "load", "Classifier", "__version__"]
