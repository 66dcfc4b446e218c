"""vitkit: train, fine-tune, evaluate, explain, export and serve Vision Transformers and all-MLP
image classifiers."""
__version__ = "0.1.0"


def __getattr__(name):
    # keep `import vitkit` light: the API pulls in torch and the data stack only when used
    if name in ("train", "evaluate", "load", "Classifier"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'vitkit' has no attribute {name!r}")


__all__ = ["train", "evaluate", "load", "Classifier", "__version__"]
