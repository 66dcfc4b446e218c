"""Hooks into a run, and the experiment trackers built on them.

A callback is any object with some of these methods, called in the process that writes the run folder:
  on_train_begin(run_dir, config, history)  the run folder, the configuration as a dict, and the epochs
                                            already done (non-empty when resuming)
  on_epoch_end(epoch, metrics)              after every epoch: metrics.csv's row (epoch counts from 1)
  on_train_end(results)                     results.json's content plus `run_dir`
  on_train_failed(error)                    the exception that ended the run (KeyboardInterrupt when
                                            interrupted)
`--log tensorboard,mlflow` adds the trackers below to the callbacks given to `vitkit.train`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import VitkitError

# tracker name -> (the module it needs, the vitkit extra that installs it)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}
FINAL_METRICS = ("top1", "top5", "loss", "f1_macro")  # of results.json, logged at the end


def tracker_names(log: str | None) -> list[str]:
    """`--log` as a list of tracker names; an unknown name, or a tracker whose library is missing, is
    an error naming the flag and what to do."""
    names = [name.strip() for name in (log or "").split(",") if name.strip()]
    for name in names:
        if name not in TRACKERS:
            raise VitkitError(f"--log {name!r}: use tensorboard, mlflow or both, comma-separated")
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise VitkitError(f"--log {name} needs the {module} package: pip install 'vitkit[{extra}]'")
    return names


def make_trackers(log: str | None) -> list:
    kinds = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}
    return [kinds[name]() for name in tracker_names(log)]


class Callbacks:
    """Calls a hook on every callback that defines it, in order."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)
        self.begun = False

    def call(self, hook: str, *args: Any) -> None:
        self.begun = self.begun or hook == "on_train_begin"
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(*args)

    def failed(self, error: BaseException) -> None:
        """on_train_failed on every callback; a callback failing here is reported, so that it cannot
        hide the error that ended the run. Nothing is called when the run failed before it began."""
        for callback in self.callbacks if self.begun else ():
            method = getattr(callback, "on_train_failed", None)
            try:
                if method is not None:
                    method(error)
            except Exception as e:
                print(f"callback {type(callback).__name__} failed while the run ended: {e}", file=sys.stderr)


def flat_params(config: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """The configuration as flat scalar parameters: model_args as model_args.<key>, None as "none",
    tuples as text."""
    params: dict[str, str | int | float | bool] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            params.update({f"{key}.{k}": v for k, v in flat_params(value).items()})
        elif value is None:
            params[key] = "none"
        elif isinstance(value, (bool, int, float, str)):
            params[key] = value
        else:
            params[key] = str(value)
    return params


def epoch_metrics(row: dict) -> dict[str, float]:
    return {key: float(value) for key, value in row.items() if key != "epoch"}


def final_metrics(results: dict) -> dict[str, float]:
    """The best weights' metrics on the reported split, as final_<split>_<name> (final_val_top1 when the
    data has no test split)."""
    metrics = results["metrics"]
    return {f"final_{results['split']}_{key}": float(metrics[key]) for key in FINAL_METRICS if key in metrics}


class TensorBoardTracker:
    """Event files in RUN/tensorboard/: every metrics.csv column as a scalar per epoch, the
    configuration as hparams, and the final metrics (`tensorboard --logdir RUN`)."""

    def on_train_begin(self, run_dir: Path, config: dict, history: list[dict]) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # a resumed run logs its earlier epochs again; purge_step=1 makes readers drop what the
        # interrupted session wrote, including epochs it logged after its last checkpoint
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=1 if history else None)
        finals = {f"final_{split}_{key}": 0.0 for split in ("val", "test") for key in FINAL_METRICS}
        declared = {"val_top1": 0.0, "val_loss": 0.0, **finals}
        for summary in hparams(flat_params(config), declared):
            self.writer.file_writer.add_summary(summary)
        for row in history:
            self.on_epoch_end(row["epoch"], row)

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        for key, value in epoch_metrics(metrics).items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def on_train_end(self, results: dict) -> None:
        for key, value in final_metrics(results).items():
            self.writer.add_scalar(key, value, results["epochs_run"])
        self.writer.close()

    def on_train_failed(self, error: BaseException) -> None:
        self.writer.close()


class MlflowTracker:
    """An MLflow run in the experiment $MLFLOW_EXPERIMENT_NAME (default: vitkit) of the store at
    $MLFLOW_TRACKING_URI, else a local file store in RUN/mlruns (`mlflow ui --backend-store-uri
    RUN/mlruns`): the configuration as params, every metrics.csv column per epoch (step = epoch), the
    final metrics, and the run's status. A resumed run continues its MLflow run."""

    RUN_DIR_TAG = "vitkit.run_dir"

    def on_train_begin(self, run_dir: Path, config: dict, history: list[dict]) -> None:
        from mlflow.tracking import MlflowClient

        run_dir = Path(run_dir).resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").as_uri()
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 keeps its file store only on request; a local store needs no server, as here
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = client = MlflowClient(uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "vitkit"
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        quoted = str(run_dir).replace("'", "\\'")
        earlier = client.search_runs([experiment_id], filter_string=f"tags.`{self.RUN_DIR_TAG}` = '{quoted}'")
        if earlier:  # resuming: the same MLflow run, its parameters already logged
            self.run_id = earlier[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
        else:
            run = client.create_run(experiment_id, run_name=run_dir.name, tags={self.RUN_DIR_TAG: str(run_dir)})
            self.run_id = run.info.run_id
            self.log_params(flat_params(config))
        logged = {metric.step for metric in client.get_metric_history(self.run_id, "val_loss")}
        for row in history:
            if row["epoch"] not in logged:
                self.on_epoch_end(row["epoch"], row)

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        self.log_metrics(epoch_metrics(metrics), epoch)

    def on_train_end(self, results: dict) -> None:
        self.log_metrics(final_metrics(results), results["epochs_run"])
        self.client.set_terminated(self.run_id, "FINISHED")

    def on_train_failed(self, error: BaseException) -> None:
        self.client.set_terminated(self.run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
