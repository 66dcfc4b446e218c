"""Experiment tracking: the callback hook of `vitkit.train`, and --log tensorboard,mlflow built on it.
What the trackers wrote is read back with the libraries' own readers (TensorBoard's EventAccumulator,
MLflow's client on the file store) and compared with metrics.csv and results.json."""

import csv
import json
import sys
from pathlib import Path

import pytest
from conftest import write_class_folders

import vitkit
from vitkit.training.resolve import make_config

TINY = dict(
    image_size=16,
    model="vit_micro_patch4_32",
    model_args={"depth": 1, "embed_dim": 32, "num_heads": 2, "mlp_dim": 64},
    batch_size=6,
    amp="off",
    progress=False,
    quiet=True,
    plots=False,
    threads=1,  # one thread per test process: the suite shares two cores
)
# three classes: no top-5 columns (1 by definition up to five classes)
COLUMNS = ("train_loss", "train_top1", "val_loss", "val_top1", "lr", "images_per_s", "time_s")


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("colours"), per_class=10, size=16)


class Recorder:
    """A user callback: remembers every call, and what of the epoch's checkpoint was on disk then."""

    def __init__(self):
        self.calls, self.last_on_disk = [], []

    def on_train_begin(self, run_dir, config, history):
        self.run_dir = Path(run_dir)
        self.calls.append(("begin", self.run_dir, config["lr"], len(history)))

    def on_epoch_end(self, epoch, metrics):
        self.calls.append(("epoch", epoch, metrics))
        last = self.run_dir / "last"
        self.last_on_disk.append(all((last / name).is_file() for name in ("model.safetensors", "config.json")))

    def on_train_end(self, results):
        self.calls.append(("end", results))

    def on_train_failed(self, error):
        self.calls.append(("failed", error))


def metrics_csv(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def tensorboard_hparams(run: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    return dict(plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams)


def test_callbacks_and_trackers_log_what_metrics_csv_holds(colours, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run, recorder = tmp_path / "run", Recorder()
    result = vitkit.train(
        data=str(colours), out=str(run), epochs=2, log="tensorboard,mlflow", callbacks=[recorder], **TINY
    )
    rows = metrics_csv(run)
    assert len(rows) == 2

    assert recorder.calls[0] == ("begin", run, 1e-3, 0)
    assert [call[1] for call in recorder.calls[1:3]] == [1, 2]
    for (_, _, metrics), row in zip(recorder.calls[1:3], rows):
        assert {k: pytest.approx(v) for k, v in row.items()} == {k: metrics[k] for k in row}
    assert (
        recorder.calls[3][0] == "end"
        and recorder.calls[3][1]["metrics"] == json.loads((run / "results.json").read_text())["metrics"]
    )
    assert recorder.calls[3][1]["run_dir"] == result["run_dir"]
    assert recorder.last_on_disk == [True, True]  # each epoch's last/ is written before the callback runs

    scalars = tensorboard_scalars(run)
    for column in COLUMNS:
        assert scalars[column] == [(int(r["epoch"]), pytest.approx(r[column], rel=1e-6)) for r in rows], column
    assert scalars[f"final_{result['split']}_top1"] == [(2, pytest.approx(result["metrics"]["top1"]))]
    hparams = tensorboard_hparams(run)
    assert hparams["lr"].number_value == pytest.approx(1e-3) and hparams["model_args.depth"].number_value == 1
    assert hparams["model"].string_value == "vit_micro_patch4_32"

    from mlflow.tracking import MlflowClient

    client = MlflowClient((run / "mlruns").resolve().as_uri())
    (mlrun,) = client.search_runs([client.get_experiment_by_name("vitkit").experiment_id])
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["lr"] == "0.001" and mlrun.data.params["model_args.depth"] == "1"
    for column in COLUMNS:
        history = client.get_metric_history(mlrun.info.run_id, column)
        assert [(m.step, m.value) for m in history] == [(int(r["epoch"]), pytest.approx(r[column])) for r in rows]
    assert mlrun.data.metrics[f"final_{result['split']}_top1"] == pytest.approx(result["metrics"]["top1"])


def test_a_resumed_run_continues_its_trackers_without_gaps_or_repeats(colours, tmp_path, monkeypatch):
    """A finished one-epoch run resumed for a second epoch: TensorBoard's reader shows every epoch once
    (the resumed session logs the history again and purges the first session's events), and MLflow
    continues the same run without logging the first epoch twice."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    vitkit.train(data=str(colours), out=str(run), epochs=1, log="tensorboard,mlflow", **TINY)
    recorder = Recorder()
    vitkit.train(resume=str(run), epochs=2, threads=1, callbacks=[recorder])
    rows = metrics_csv(run)
    assert [row["epoch"] for row in rows] == [1, 2] and recorder.calls[0][3] == 1  # began with one epoch done

    scalars = tensorboard_scalars(run)
    assert scalars["val_loss"] == [(1, pytest.approx(rows[0]["val_loss"])), (2, pytest.approx(rows[1]["val_loss"]))]

    from mlflow.tracking import MlflowClient

    client = MlflowClient((run / "mlruns").resolve().as_uri())
    (mlrun,) = client.search_runs([client.get_experiment_by_name("vitkit").experiment_id])
    history = client.get_metric_history(mlrun.info.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [
        (1, pytest.approx(rows[0]["val_loss"])),
        (2, pytest.approx(rows[1]["val_loss"])),
    ]
    assert mlrun.info.status == "FINISHED" and mlrun.data.params["epochs"] == "1"  # the parameters it started with


class StopsAfterTheFirstEpoch(Recorder):
    def on_epoch_end(self, epoch, metrics):
        super().on_epoch_end(epoch, metrics)
        raise RuntimeError("the callback stops the run")


def test_a_run_that_fails_calls_on_train_failed_with_the_error_and_stays_resumable(colours, tmp_path):
    run, recorder = tmp_path / "run", StopsAfterTheFirstEpoch()
    with pytest.raises(RuntimeError, match="the callback stops the run") as raised:
        vitkit.train(data=str(colours), out=str(run), epochs=2, callbacks=[recorder], **TINY)
    assert [call[0] for call in recorder.calls] == ["begin", "epoch", "failed"]
    assert recorder.calls[-1][1] is raised.value
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    assert vitkit.train(resume=str(run), threads=1)["epochs_run"] == 2


def test_mlflow_follows_the_tracking_uri(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from vitkit.training.callbacks import MlflowTracker

    store = (tmp_path / "shared-store").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "digits")
    tracker, run = MlflowTracker(), tmp_path / "run"
    tracker.on_train_begin(run, {"lr": 0.01, "mean": None}, [])
    tracker.on_epoch_end(1, {"epoch": 1, "val_loss": 0.5})
    tracker.on_train_end({"split": "val", "metrics": {"top1": 0.75}, "epochs_run": 1})
    client = MlflowClient(store)
    (mlrun,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert mlrun.data.params == {"lr": "0.01", "mean": "none"}
    assert mlrun.data.metrics == {"val_loss": 0.5, "final_val_top1": 0.75} and mlrun.info.run_name == "run"
    assert not (run / "mlruns").exists()


@pytest.mark.parametrize("tracker, extra", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_a_missing_tracker_library_names_the_extra(tracker, extra, monkeypatch):
    monkeypatch.setitem(sys.modules, tracker, None)  # as if not installed
    with pytest.raises(
        ValueError, match=rf"--log {tracker} needs the {tracker} package: pip install 'vitkit\[{extra}\]'"
    ):
        make_config(log=f"{tracker}")
    with pytest.raises(ValueError, match="--log 'wandb': use tensorboard, mlflow or both"):
        make_config(log="wandb")
