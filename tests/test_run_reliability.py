"""Training runs that go wrong say so: one folder per run, honest status, clear errors."""

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_vitkit, subprocess_env, vitkit_cmd, write_class_folders

import vitkit
from vitkit.data.folder import load_folder
from vitkit.data.images import BadImageError
from vitkit.data.preprocess import Preprocessing
from vitkit.fileio import replace_dir, settled_dir

TINY = (
    "--model-arg",
    "embed_dim=16",
    "--model-arg",
    "depth=1",
    "--model-arg",
    "num_heads=2",
    "--model-arg",
    "mlp_dim=32",
    "--threads",
    "1",
    "--no-progress",
    "--no-plots",
)
OLD_RUN = Path(__file__).parent / "fixtures" / "run-v0.1"


def status(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


@pytest.mark.slow  # training processes started, signalled or raced
def test_two_runs_on_one_folder_cannot_both_succeed(tmp_path):
    out = tmp_path / "run"
    procs = [
        subprocess.Popen(
            vitkit_cmd("train", "--epochs", "2", "--seed", str(seed), "--out", str(out), *TINY),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        for seed in (0, 1)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "in use by another vitkit process" in loser or "already holds a run" in loser
    assert status(out)["status"] == "complete"


def test_a_diverging_run_fails_naming_the_step(tmp_path):
    out = tmp_path / "run"
    proc = run_vitkit(
        "train", "--lr", "1e6", "--epochs", "2", "--out", str(out), "--optimizer", "sgd", "--warmup-epochs", "0", *TINY
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "non-finite" in proc.stderr and "at step" in proc.stderr and "lower --lr" in proc.stderr
    record = status(out)
    assert record["status"] == "failed" and "non-finite" in record["error"]
    assert record["versions"]["vitkit"] == vitkit.__version__ and record["device"] == "cpu"
    assert record["started"] <= record["updated"] and "git_commit" in record and record["host"]
    assert not (out / "results.json").exists()


def test_a_single_class_folder_is_refused(tmp_path):
    root = write_class_folders(tmp_path / "imgs", classes=("cat",), per_class=10)
    proc = run_vitkit("train", "--data", str(root), "--epochs", "1", "--out", str(tmp_path / "run"), *TINY)
    assert proc.returncode == 2 and "needs at least two class folders" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_folder_cache_remembers_the_bad_file_policy(tmp_path):
    root = write_class_folders(tmp_path / "imgs", per_class=6)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _, bad = load_folder(root, Preprocessing(16), skip_bad=True)
    assert len(bad) == 1
    with pytest.raises(BadImageError, match="broken.png"):  # not served from the skipping run's cache
        load_folder(root, Preprocessing(16), skip_bad=False)


@pytest.mark.slow  # training processes started, signalled or raced
def test_sigterm_marks_the_run_interrupted_and_resumable(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        vitkit_cmd("train", "--epochs", "500", "--out", str(out), *TINY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    deadline = time.time() + 120
    while not (out / "last" / "trainer.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    record = status(out)
    assert record["status"] == "failed" and record["error"] == "interrupted"
    assert "--resume" in err and "Traceback" not in err


def test_a_damaged_trainer_state_gets_a_clear_error_and_leaves_the_run_as_it_was(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    state = run / "last" / "trainer.pt"
    state.write_bytes(state.read_bytes()[:1000])
    proc = run_vitkit("train", "--out", str(run), "--resume", "--threads", "1")
    assert status(run) == status(OLD_RUN)  # a failed resume of a complete run: still complete, not failed
    assert proc.returncode == 2 and "trainer.pt cannot be read" in proc.stderr and "Traceback" not in proc.stderr
    assert f"run folder {run} is unchanged" in proc.stderr


def test_an_interrupted_checkpoint_swap_keeps_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    (run / "best").rename(run / "best.old")  # killed between the two renames of a swap
    assert settled_dir(run / "best") == run / "best.old"
    clf = vitkit.load(run, backend="torch")
    assert clf.class_names == [str(i) for i in range(10)]
    new = tmp_path / "new-best"
    shutil.copytree(run / "best.old", new)
    replace_dir(new, run / "best")  # the next swap puts the old copy back first, then swaps
    assert (run / "best" / "config.json").is_file() and not (run / "best.old").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--std", "0"), "--std needs one value per channel, all positive"),
        (("--image-size", "0"), "--image-size must be at least 1"),
        (("--threads", "-1"), "--threads must not be negative"),
        (("--data", "cifar-10"), "Did you mean cifar10"),
    ],
)
def test_bad_training_flags_fail_before_any_work(tmp_path, args, message):
    out = tmp_path / "run"
    proc = run_vitkit("train", *args, "--out", str(out))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()  # refused before the folder was claimed
