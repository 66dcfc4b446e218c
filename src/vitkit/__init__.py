"""vitkit: train, fine-tune, evaluate, explain, export and serve Vision Transformers and all-MLP
image classifiers."""
__version__ = "0.1.0"
