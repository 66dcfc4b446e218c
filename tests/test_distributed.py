"""DistributedDataParallel on CPU with gloo: 2 processes = 1 process, resume at another world size, failure
handling, restarts under torchrun's elastic agent (a killed worker, a lost node) and multi-label metrics."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_vitkit, subprocess_env, vitkit_cmd
from elastic_data import colour_labels
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


# The range of the final test top-1 of COMMON's run in one process over 5 seeds, and of the multi-label run's
# mAP: benchmarks/results/elastic_seed_spread.json (benchmarks/elastic_seed_spread.py).
SEED_SPREAD = json.loads((ROOT / "benchmarks" / "results" / "elastic_seed_spread.json").read_text())


def top1(run: Path) -> float:
    return json.loads((run / "results.json").read_text())["metrics"]["top1"]


def mid_epoch_state(out: Path, proc: subprocess.Popen, timeout: float = 240) -> dict:
    """Once last/ holds a first mid-epoch state: what a kill then interrupts."""
    state_file, deadline = out / "last" / "trainer.pt", time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            state = torch.load(state_file, weights_only=True)
        except (OSError, RuntimeError, EOFError):  # not written yet, or swapped in while read
            state = None
        if state and state["next_batch"] > 0:
            return state
        time.sleep(0.02)
    pytest.fail(f"no mid-epoch last/ appeared in {out} (exit code {proc.poll()})")


def finished(proc: subprocess.Popen, timeout: float = 300) -> str:
    """The launcher's stderr once it has ended; its whole process group killed if it does not end."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the run did not end after the kill")


def test_killed_mid_epoch_and_resumed_with_fewer_processes(runs, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        vitkit_cmd("train", *COMMON, "--nproc", "2", "--save-every", "4", "--out", str(out)),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    mid_epoch_state(out, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    state = torch.load(out / "last" / "trainer.pt", weights_only=True)
    assert state["epoch"] == 0 and state["next_batch"] > 0 and len(state["rank_rngs"]) == 2

    # one process continues the run of two: the same global batch, steps and data order
    resumed = run_vitkit("train", "--out", str(out), "--resume", "--no-progress", "--threads", "1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"continuing at epoch 1, batch {state['next_batch']} (step {state['step']}" in resumed.stderr
    assert "world size 2 -> 1: the global batch stays 64 (64 per process, was 32)" in resumed.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 1 and results["global_batch_size"] == 64
    assert (
        results["images_trained"]
        == results["images_planned"]
        == json.loads((runs / "double" / "results.json").read_text())["images_trained"]
    )
    # SGD without random augmentation: one process computes what two do, to float summation order
    a, b = weights(runs / "double"), weights(out)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert abs(top1(out) - top1(runs / "double")) <= SEED_SPREAD["digits_top1_spread"]


def test_a_killed_worker_is_restarted_and_the_run_ends_as_planned(runs, tmp_path):
    out = tmp_path / "restarted"
    command = ["train", *COMMON, "--nproc", "2", "--max-restarts", "1", "--save-every", "4", "--out", str(out)]
    proc = subprocess.Popen(
        vitkit_cmd(*command), env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    state = mid_epoch_state(out, proc)
    victim = next(p for p in descendants(proc.pid) if rank_of(p) == 1)
    os.kill(victim, signal.SIGKILL)
    err = finished(proc)
    assert proc.returncode == 0, err[-3000:]
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "complete"
    [restart] = status["restarts"]
    # rank 1 died without a word; rank 0 joins it when gloo's transport thread aborts the process on the lost
    # peer (an uncaught gloo::IoException, "terminate called ...") before Python sees the peer's error
    failed = [entry["rank"] for entry in restart["failed"]]
    assert 1 in failed and set(failed) <= {0, 1} and restart["world_size"] == 2, (restart, err[-3000:])
    assert restart["continued_from"]["step"] >= state["step"] and restart["continued_from"]["epoch"] == 1
    results = json.loads((out / "results.json").read_text())
    assert results["images_trained"] == results["images_planned"]
    # the restart continued from the state it saved: what the uninterrupted run computed, bit for bit
    a, b = weights(runs / "double"), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert abs(top1(out) - top1(runs / "double")) <= SEED_SPREAD["digits_top1_spread"]


def test_two_nodes_lose_one_and_the_other_finishes_alone(runs, tmp_path):
    out, port = tmp_path / "nodes", free_port()

    def node(host_store: bool) -> subprocess.Popen:
        agent = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "1:2", "--nproc-per-node", "1",
            "--max-restarts", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
            "--rdzv-id", "two-nodes",
            "--rdzv-conf", f"is_host={str(host_store).lower()},last_call_timeout=2,keep_alive_interval=1",
        ]  # fmt: skip
        env = {**subprocess_env(), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
        return subprocess.Popen(
            [*agent, "-m", "vitkit", "train", *COMMON, "--save-every", "4", "--out", str(out)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip

    first, second = node(True), node(False)  # the first hosts the rendezvous store, so the second may go
    try:
        mid_epoch_state(out, first)
        assert json.loads((out / "run.json").read_text())["world_size"] == 2
        os.killpg(second.pid, signal.SIGKILL)  # the node: its agent and its worker
        err = finished(first)
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert first.returncode == 0, err[-3000:]
    assert "world size 2 -> 1: the global batch stays 64 (64 per process, was 32)" in err
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "complete" and status["world_size"] == 1
    restart = status["restarts"][-1]
    assert restart["world_size_before"] == 2 and restart["world_size"] == 1 and len(restart["nodes_lost"]) == 1
    results = json.loads((out / "results.json").read_text())
    assert results["images_trained"] == results["images_planned"]
    a, b = weights(runs / "double"), weights(out)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert abs(top1(out) - top1(runs / "double")) <= SEED_SPREAD["digits_top1_spread"]


def test_multilabel_under_two_processes_matches_one(tmp_path):
    data, table = colour_labels(tmp_path / "colours")
    common = [*COMMON, "--data", str(data), "--labels", str(table), "--batch-size", "32", "--image-size", "16"]
    maps = {}
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        proc = train(*common, "--out", str(tmp_path / name), *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        maps[name] = json.loads((tmp_path / name / "results.json").read_text())["metrics"]
    # every image once: the ranks' shards pooled, not one rank's
    assert maps["two"]["count"] == maps["one"]["count"]
    assert maps["two"]["mean_true_labels"] == maps["one"]["mean_true_labels"]
    assert maps["two"]["map_macro"] == pytest.approx(maps["one"]["map_macro"], abs=1e-3)
    assert maps["two"]["map_micro"] == pytest.approx(maps["one"]["map_micro"], abs=1e-3)
    assert abs(maps["two"]["map_macro"] - maps["one"]["map_macro"]) <= SEED_SPREAD["colours_map_spread"]


def test_batch_not_divisible_by_world_size(tmp_path):
    proc = run_vitkit(
        "train", "--nproc", "2", "--batch-size", "63", "--epochs", "1", "--out", str(tmp_path / "r"), "--no-progress"
    )
    assert proc.returncode != 0
    assert "--batch-size 63 (global) does not divide across 2 processes" in proc.stderr


def test_batch_scope_and_a_resumed_global_batch_split_across_processes():
    """--batch-scope global splits --batch-size across the processes, device gives each process that batch;
    a resumed run keeps its global batch and takes any number of processes that divides it."""
    from vitkit.errors import VitkitError
    from vitkit.training.build import batch_sizes
    from vitkit.training.resolve import make_config

    scoped = {scope: make_config(batch_size=63, batch_scope=scope) for scope in ("global", "device")}
    assert batch_sizes(make_config(batch_size=64), 2, 1000) == (32, 64)
    assert batch_sizes(scoped["device"], 2, 1000) == (63, 126)
    with pytest.raises(VitkitError, match="--batch-size 63 .global. does not divide across 2 processes"):
        batch_sizes(scoped["global"], 2, 1000)
    assert batch_sizes(scoped["device"], 4, 1000, kept=128) == (32, 128)  # the saved global batch wins
    with pytest.raises(VitkitError, match="global batch of 128 does not divide across 3 processes"):
        batch_sizes(scoped["global"], 3, 1000, kept=128)
    with pytest.raises(VitkitError, match="global batch of 252 is larger than the 200 training images"):
        batch_sizes(scoped["device"], 4, 200)


def test_the_collective_timeout_comes_from_the_environment_and_a_bad_one_is_refused_before_launch(
    tmp_path, monkeypatch
):
    from vitkit.training.distributed import DEFAULT_TIMEOUT_S, collective_timeout

    monkeypatch.delenv("VITKIT_DIST_TIMEOUT", raising=False)
    assert collective_timeout().total_seconds() == DEFAULT_TIMEOUT_S == 300
    monkeypatch.setenv("VITKIT_DIST_TIMEOUT", "42")
    assert collective_timeout().total_seconds() == 42
    out = tmp_path / "never"
    args = ("train", "--nproc", "2", "--epochs", "1", "--out", str(out))
    proc = run_vitkit(*args, env={**subprocess_env(), "VITKIT_DIST_TIMEOUT": "5m"})
    assert proc.returncode == 2 and not out.exists(), proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "vitkit train: error: VITKIT_DIST_TIMEOUT='5m': give a whole number of seconds, 1 or more (default 300)"
    ]


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
