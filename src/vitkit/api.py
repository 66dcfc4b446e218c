"""The Python API behind the command line: its public entry points, each one at home in its package
(training/, check/, eval/, inference/, export/); train, check and lr_find turn options into their configs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Any

from .eval.checkpoint import evaluate, top_losses
from .export.int8 import export_int8
from .inference import Classifier, load
from .options import check_known, option, typed_values

__all__ = ["train", "check", "lr_find", "evaluate", "top_losses", "load", "Classifier", "export_int8"]


def train(
    resume: str | os.PathLike | None = None,
    callbacks=(),
    started: float | None = None,
    config: str | os.PathLike | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train a model and write a run folder; returns results.json's content plus `run_dir`.

    `vitkit.train(data="cifar10", model="vit_tiny_patch4_32", epochs=20)`; any TrainConfig field is an
    option, a `preset` fills in the seed's values, `config` is a YAML file of options under the ones given
    here (see `vitkit.training.resolve` for the precedence). `resume=RUN_DIR` continues an interrupted run.
    `callbacks`: objects with any of on_train_begin(run_dir, config, history), on_epoch_end(epoch,
    metrics), on_train_end(results), on_train_failed(error) (see vitkit.training.callbacks).
    """
    from .training import train as run_training
    from .training.config import explicit_values
    from .training.resolve import make_config, resume_config

    cfg = resume_config(resume, **explicit_values(config, options)) if resume else make_config(config, **options)
    return run_training(cfg, callbacks, started)


def check(data: str, started: float | None = None, quiet: bool = False, **options: Any) -> dict[str, Any]:
    """Find what is wrong with a dataset before it is trained on, and write the report to `out` (default
    ./check): file problems, exact and near duplicates (leaks between splits first), balance, and likely
    label errors from a quick k-fold training within `time_budget` minutes. Takes `vitkit check`'s options
    (`labels`, `time_budget`, `out`, `folds`, `label_errors`, ...); returns check.json's content plus `out`."""
    from .check import CheckOptions, run_check
    from .options import check_options

    check_known(options, CheckOptions, "check options")
    config = CheckOptions(data=str(data), **typed_values(options, CheckOptions))
    check_options(config)
    return run_check(config, started=started, quiet=quiet)


_sweep = partial(option, group="sweep", commands=("lr-find",))


@dataclass
class LRFindOptions:
    """The sweep's own options of `vitkit lr-find` and `lr_find` (the others are training options); here,
    not in vitkit.training, as the API's defaults must not import the training code."""

    steps: int = _sweep(100, "optimizer steps at most", at_least=2)
    start_lr: float = _sweep(1e-7, "first learning rate", above=0)
    end_lr: float = _sweep(10.0, "last learning rate", above=0)
    plot: str = _sweep("lr_find.png", "PNG file to write")


def lr_find(
    steps: int = LRFindOptions.steps,
    start_lr: float = LRFindOptions.start_lr,
    end_lr: float = LRFindOptions.end_lr,
    plot: str | os.PathLike | None = LRFindOptions.plot,
    **options: Any,
) -> dict[str, Any]:
    """Learning-rate range test on a fresh model built from training options (as `train` takes them):
    the rate grows exponentially from start_lr to end_lr over at most `steps` steps, stopping when the
    loss diverges. Returns the rates, losses and `suggested_lr` (steepest descent of the smoothed
    loss); `plot` is the loss-against-rate figure to write (None: none)."""
    from .training.lr_find import lr_find as sweep
    from .training.resolve import make_config

    result = sweep(make_config(**options), steps, start_lr, end_lr)
    if plot is not None:
        from .viz.plots import plot_lr_find

        plot_lr_find(result.lrs, result.losses, result.smoothed, result.suggested_lr, plot)
    return {**result.to_dict(), "plot": None if plot is None else str(plot)}
