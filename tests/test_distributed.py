"""DistributedDataParallel on CPU with gloo: 2 processes = 1 process, resume, and failure handling."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import run_vitkit, subprocess_env, vitkit_cmd
from safetensors.torch import load_file

# one worker builds the module's runs: under pytest-xdist each worker would otherwise train them again
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ddp")]

# No random augmentation, fp32 and SGD: the two runs then differ only in floating-point summation order
# (one mean over 64 samples against two means over 32). Adam's division by sqrt(v) amplifies that
# order noise on near-zero gradients, so it would measure the optimizer, not the distribution.
COMMON = [
    "--epochs",
    "2",
    "--no-progress",
    "--no-plots",
    "--crop-padding",
    "0",
    "--threads",
    "1",
    "--batch-size",
    "64",
    "--amp",
    "off",
    "--optimizer",
    "sgd",
    "--lr",
    "0.05",
    "--warmup-epochs",
    "0",
    "--seed",
    "3",
]


def train(*args, timeout=600):
    return run_vitkit("train", *COMMON, *args, timeout=timeout)


def weights(run: Path) -> dict:
    return load_file(str(run / "last" / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    for name, extra in (("single", []), ("double", ["--nproc", "2"])):
        proc = train("--out", str(root / name), *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_two_processes_equal_one(runs):
    single, double = weights(runs / "single"), weights(runs / "double")
    assert single.keys() == double.keys()
    worst = max((single[k] - double[k]).abs().max().item() for k in single)
    assert worst < 1e-5, worst
    status = json.loads((runs / "double" / "run.json").read_text())
    assert status["world_size"] == 2 and status["global_batch_size"] == 64 and status["per_device_batch_size"] == 32


def test_distributed_metrics_equal_a_single_process_evaluation(runs):
    results = json.loads((runs / "double" / "results.json").read_text())
    proc = run_vitkit("eval", str(runs / "double" / "best"), "--json")
    assert proc.returncode == 0, proc.stderr
    single = json.loads(proc.stdout)
    assert single["confusion_matrix"] == results["metrics"]["confusion_matrix"]
    assert single["count"] == results["metrics"]["count"] == sum(map(sum, single["confusion_matrix"]))
    assert single["top5"] == pytest.approx(results["metrics"]["top5"])
    assert single["loss"] == pytest.approx(results["metrics"]["loss"], rel=1e-5)


def descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: tells a live process from a reused PID."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def still_running(pid: int, started: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and start_time(pid) == started


def rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def test_killed_mid_epoch_and_resumed_matches(runs, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        vitkit_cmd("train", *COMMON, "--nproc", "2", "--save-every", "4", "--out", str(out)),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    state_file = out / "last" / "trainer.pt"
    deadline = time.time() + 300
    while not state_file.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    state = torch.load(state_file, weights_only=True)
    assert state["epoch"] == 0 and state["next_batch"] > 0 and len(state["rank_rngs"]) == 2

    mismatch = run_vitkit("train", "--out", str(out), "--resume", "--no-progress")
    assert mismatch.returncode == 2 and "trained with 2 process(es) but is resumed with 1" in mismatch.stderr

    resumed = run_vitkit(
        "train", "--out", str(out), "--resume", "--nproc", "2", "--no-progress", "--threads", "1", timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = weights(runs / "double"), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_batch_not_divisible_by_world_size(tmp_path):
    proc = run_vitkit(
        "train", "--nproc", "2", "--batch-size", "63", "--epochs", "1", "--out", str(tmp_path / "r"), "--no-progress"
    )
    assert proc.returncode != 0
    assert "--batch-size 63 (global) does not divide across 2 processes" in proc.stderr


def test_a_dead_rank_stops_the_others(tmp_path):
    out = tmp_path / "dies"
    proc = subprocess.Popen(
        vitkit_cmd("train", "--nproc", "2", "--epochs", "200", "--out", str(out), "--no-progress", "--threads", "1"),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 180
    victim = None
    while victim is None and time.time() < deadline:
        if (out / "metrics.csv").exists():
            victim = next((p for p in descendants(proc.pid) if rank_of(p) == 1), None)
        time.sleep(0.1)
    assert victim is not None, "rank 1 never started"
    # every process of the run, listed while the launcher still owns them: once it exits, survivors are
    # re-parented and no longer its descendants
    workers = {p: start_time(p) for p in descendants(proc.pid) if rank_of(p) is not None}
    assert len(workers) >= 2 and victim in workers
    started = time.time()
    os.kill(victim, signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the surviving rank hung after its peer died")
    assert proc.returncode != 0 and time.time() - started < 120
    assert "a training process failed" in err and "--resume" in err
    survivors = [p for p, started in workers.items() if still_running(p, started)]
    assert not survivors, f"training processes {survivors} outlived the failed run"
