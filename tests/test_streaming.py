"""Folders streamed from disk: the memory limit as a setting, persistent seeded loaders, and streamed
runs that train, evaluate, predict, resume and shard across processes like in-memory ones."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from conftest import run_vitkit, shared_dataset, subprocess_env, vitkit_cmd, write_class_folders
from corpus import build_corpus
from PIL import Image
from safetensors.torch import load_file

import vitkit
from vitkit.data import prepare
from vitkit.data.folder import load_folder
from vitkit.data.loader import BatchLoader
from vitkit.data.prepare import channel_stats
from vitkit.data.preprocess import Preprocessing


def test_memory_limit_from_argument_and_environment(tmp_path, monkeypatch):
    root = write_class_folders(tmp_path / "imgs", per_class=4)
    assert load_folder(root, Preprocessing(16))[0].train.in_memory
    assert not load_folder(root, Preprocessing(16), memory_limit_gb=0)[0].train.in_memory
    monkeypatch.setenv("VITKIT_MEMORY_LIMIT_GB", "0")
    assert not load_folder(root, Preprocessing(16))[0].train.in_memory
    assert load_folder(root, Preprocessing(16), memory_limit_gb=1)[0].train.in_memory  # the argument wins
    monkeypatch.setenv("VITKIT_MEMORY_LIMIT_GB", "lots")
    with pytest.raises(ValueError, match="VITKIT_MEMORY_LIMIT_GB='lots'"):
        load_folder(root, Preprocessing(16))


def test_the_default_memory_limit_and_worker_count_are_the_documented_ones(monkeypatch):
    """large-datasets.md: 4 GiB unless the environment says otherwise; the node's cores shared among its
    training processes less one for training, at least 1 worker and at most 8."""
    from vitkit.data.folder import memory_limit_bytes
    from vitkit.data.loader import auto_workers

    monkeypatch.delenv("VITKIT_MEMORY_LIMIT_GB", raising=False)
    assert memory_limit_bytes() == 4 << 30
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cores, processes, workers in [(2, None, 1), (32, None, 8), (32, "4", 7), (4, "4", 1), (6, "2", 2)]:
        monkeypatch.setenv("OMP_NUM_THREADS", str(cores))
        if processes:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", processes)
        assert auto_workers() == workers, (cores, processes)


def test_streamed_epochs_match_in_memory_with_persistent_workers(tmp_path):
    root = write_class_folders(tmp_path / "imgs", per_class=6)
    memory = load_folder(root, Preprocessing(16), cache=False)[0].train
    streamed = load_folder(root, Preprocessing(16), memory_limit_gb=0)[0].train
    a = BatchLoader(memory, 5, shuffle=True, seed=3, drop_last=True)
    b = BatchLoader(streamed, 5, shuffle=True, seed=3, drop_last=True, workers=2)
    pids = []
    for epoch in range(3):
        for start in (0, 2):
            want = list(a.batches(epoch, start))
            got = list(b.batches(epoch, start))
            assert len(got) == len(want) == 3 - start
            for (x, y), (u, v) in zip(want, got):
                assert torch.equal(x, u) and torch.equal(y, v)
        pids.append(sorted(w.pid for w in b._streaming_loader()._iterator._workers))
    assert len(pids[0]) == 2 and pids[0] == pids[1] == pids[2]  # the same worker processes every epoch


def test_streamed_normalisation_equals_in_memory():
    root = shared_dataset("flowers-mini")
    memory = load_folder(root / "train", Preprocessing(24), cache=False)[0].train
    streamed = load_folder(root / "train", Preprocessing(24), memory_limit_gb=0)[0].train
    assert channel_stats(streamed, 3, workers=1) == channel_stats(memory, 3)
    assert channel_stats(streamed, 1) == channel_stats(memory, 1)


def test_normalisation_samples_the_whole_split(tmp_path, monkeypatch):
    """Class folders are listed one after another: a sample of the first images would see only the dark
    class. An evenly spaced one sees both, streamed or in memory."""
    for name, value in (("a_dark", 20), ("b_bright", 220)):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (8, 8), (value,) * 3).save(tmp_path / "imgs" / name / f"{i}.png")
    monkeypatch.setattr(prepare, "STATS_IMAGES", 4)
    memory = load_folder(tmp_path / "imgs", Preprocessing(8), cache=False)[0].train
    streamed = load_folder(tmp_path / "imgs", Preprocessing(8), memory_limit_gb=0)[0].train
    mean, _ = channel_stats(memory, 3)
    assert mean == pytest.approx((120 / 255,) * 3, abs=1e-6)
    assert channel_stats(streamed, 3) == channel_stats(memory, 3)


def _folder_with_bad_images(root):
    """A small folder with a truncated JPEG and a text file named .jpg among good images."""
    write_class_folders(root, per_class=6, size=16)
    truncated = next(case for case in build_corpus(heavy=False) if case.kind == "truncated-jpeg")
    bad = [root / "dog" / "cut.jpg", root / "fox" / "notes.jpg"]
    bad[0].write_bytes(truncated.data)
    bad[1].write_text("a note, not pixels\n")
    return root, bad


def test_streamed_bad_image_stops_the_run_in_one_line(tmp_path):
    """Met in a loader worker process (the first read of a streamed run is the normalisation statistics,
    by the --workers processes), the error reaches the user as one line naming the file, not as the
    worker's traceback."""
    root, bad = _folder_with_bad_images(tmp_path / "imgs")
    args = ["--data", str(root), "--memory-limit-gb", "0", "--out", str(tmp_path / "run")]
    args += "--image-size 16 --model vit_micro_patch4_32 --model-arg depth=1 --epochs 1 --batch-size 8".split()
    proc = run_vitkit("train", *args, "--threads", "1", "--workers", "1", "--no-progress")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("vitkit train: error: ") and last.endswith("or pass --skip-bad-images")
    assert any(f"{path}: " in last for path in bad), last


def test_streamed_folder_skips_bad_images_like_in_memory(tmp_path):
    root, bad = _folder_with_bad_images(tmp_path / "imgs")
    result = vitkit.train(
        data=str(root),
        out=str(tmp_path / "run"),
        memory_limit_gb=0,
        skip_bad_images=True,
        workers=1,
        image_size=16,
        model="vit_micro_patch4_32",
        model_args={"depth": 1},
        epochs=1,
        batch_size=8,
        threads=1,
        progress=False,
    )
    assert json.loads((tmp_path / "run" / "run.json").read_text())["data_streamed"]
    assert result["skipped_images"] == 2
    listed = (tmp_path / "run" / "skipped_images.txt").read_text().splitlines()
    assert [line.split(": ")[0] for line in listed] == [str(path) for path in bad]

    memory, memory_bad = load_folder(root, Preprocessing(16), skip_bad=True, cache=False)
    assert memory.train.in_memory and memory_bad == listed
    streamed, _ = load_folder(root, Preprocessing(16), skip_bad=True, memory_limit_gb=0)
    assert len(streamed.train) == len(memory.train) == 18 and set(bad).isdisjoint(streamed.train.paths)
    assert torch.equal(streamed.train.labels, memory.train.labels)


def test_streamed_bad_image_check_is_kept_for_the_next_run(tmp_path, monkeypatch):
    root, bad = _folder_with_bad_images(tmp_path / "imgs")
    first = load_folder(root, Preprocessing(16), skip_bad=True, memory_limit_gb=0)
    decoded = []
    original = Preprocessing.load_array
    monkeypatch.setattr(
        Preprocessing,
        "load_array",
        lambda self, source, name=None: decoded.append(source) or original(self, source, name),
    )
    again = load_folder(root, Preprocessing(16), skip_bad=True, memory_limit_gb=0)
    assert decoded == [] and again[1] == first[1] and again[0].train.paths == first[0].train.paths
    bad[1].unlink()  # a changed folder is checked again
    changed = load_folder(root, Preprocessing(16), skip_bad=True, memory_limit_gb=0)
    assert len(decoded) == 19 and len(changed[1]) == 1 and str(bad[0]) in changed[1][0]


TRAIN = ["--image-size", "32", "--epochs", "3", "--threads", "1", "--no-progress", "--no-plots", "--seed", "1"]


@pytest.mark.slow
def test_forced_streaming_trains_evaluates_and_predicts_like_in_memory(tmp_path):
    flowers = shared_dataset("flowers-mini")
    runs = {}
    for name, limit in (("memory", "4"), ("streamed", "0")):
        runs[name] = tmp_path / name
        proc = run_vitkit("train", "--data", str(flowers), *TRAIN, "--memory-limit-gb", limit, "--out", str(runs[name]))
        assert proc.returncode == 0, proc.stderr[-3000:]
    info = {name: json.loads((run / "run.json").read_text()) for name, run in runs.items()}
    assert info["streamed"]["data_streamed"] and not info["memory"]["data_streamed"]
    assert info["streamed"]["loader_workers"] >= 1
    results = {name: json.loads((run / "results.json").read_text()) for name, run in runs.items()}
    assert results["streamed"]["metrics"]["count"] == results["memory"]["metrics"]["count"] == 100
    # the same run (README: same decode, statistics and order): the same predictions, not nearly the same
    assert results["streamed"]["metrics"]["top1"] == results["memory"]["metrics"]["top1"]
    assert results["streamed"]["metrics"]["confusion_matrix"] == results["memory"]["metrics"]["confusion_matrix"]
    assert abs(results["streamed"]["metrics"]["loss"] - results["memory"]["metrics"]["loss"]) < 1e-5

    evaluated = run_vitkit("eval", str(runs["streamed"]), "--split", "val", "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads(evaluated.stdout)
    assert metrics["count"] == 100 and metrics["top1"] == pytest.approx(results["streamed"]["metrics"]["top1"])

    photo = sorted((flowers / "val" / "roses").glob("*.jpg"))[0]
    top = {}
    for name, run in runs.items():
        predicted = run_vitkit("predict", str(run), str(photo), "--format", "json")
        assert predicted.returncode == 0, predicted.stderr[-3000:]
        top[name] = json.loads(predicted.stdout)["results"][0]["predictions"][0]
    assert top["streamed"]["label"] in results["streamed"]["metrics"]["class_names"]
    assert top["streamed"]["label"] == top["memory"]["label"]
    assert top["streamed"]["score"] == pytest.approx(top["memory"]["score"], abs=0.02)


def _final_weights(run):
    return load_file(str(run / "last" / "model.safetensors"))


@pytest.mark.slow
def test_streamed_run_resumed_after_sigkill_matches_uninterrupted(tmp_path):
    flowers = shared_dataset("flowers-mini")
    args = ["train", "--data", str(flowers), *TRAIN, "--epochs", "2", "--batch-size", "32", "--save-every", "3"]
    args += ["--memory-limit-gb", "0", "--workers", "1", "--model", "vit_micro_patch4_32", "--ema", "0.99"]
    full = tmp_path / "full"
    subprocess.run(vitkit_cmd(*args, "--out", str(full)), check=True, env=subprocess_env(), timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        vitkit_cmd(*args, "--out", str(killed)),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    state_file = killed / "last" / "trainer.pt"
    deadline = time.time() + 300
    while not state_file.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its decoding workers
    proc.wait()
    state = torch.load(state_file, weights_only=True)
    assert state["epoch"] == 0 and state["next_batch"] > 0, "the kill should land mid-epoch"

    resumed = run_vitkit("train", "--out", str(killed), "--resume", "--no-progress", "--threads", "1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((killed / "run.json").read_text())["data_streamed"]
    a, b = _final_weights(full), _final_weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (
        json.loads((killed / "results.json").read_text())["metrics"]
        == json.loads((full / "results.json").read_text())["metrics"]
    )


RANK_SCRIPT = """
import json, sys
from pathlib import Path
from vitkit.training.build import Runtime, build
from vitkit.training.resolve import make_config

cfg = make_config(data=sys.argv[1], memory_limit_gb=0, image_size=8, batch_size=8, workers=1, threads=1,
                  val_split=0.25, progress=False)
runtime = Runtime.create(cfg)
_, setup = build(cfg, runtime)
assert not setup.data.train.in_memory and runtime.ctx.world_size == 2
seen = {}
for name, loader, epochs in (("train", setup.train_loader, 2), ("val", setup.val_loader, 1)):
    for epoch in range(epochs):
        ids = []
        for images, _ in loader.batches(epoch):
            ids += (images[:, 0, 0, 0].long() + 256 * images[:, 1, 0, 0].long()).tolist()
        seen[f"{name}{epoch}"] = ids
Path(sys.argv[2], f"rank{runtime.ctx.rank}.json").write_text(json.dumps(seen))
"""


@pytest.mark.slow
def test_two_processes_read_disjoint_samples_that_cover_a_streamed_split(tmp_path):
    """Every image carries its own number in its first pixel (lossless PNG), so each rank's batches
    say exactly which files it read."""
    root = tmp_path / "numbered"
    for i in range(64):
        folder = root / ("odd" if i % 2 else "even")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.zeros((8, 8, 3), np.uint8)
        pixels[..., 0], pixels[..., 1] = i % 256, i // 256
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
        + [str(root), str(tmp_path)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for part, size in (("train0", 48), ("train1", 48), ("val0", 16)):
        a, b = set(ranks[0][part]), set(ranks[1][part])
        assert len(a) == len(ranks[0][part]) and len(b) == len(ranks[1][part])  # no image twice on a rank
        assert not a & b, part
        assert len(a | b) == size, part
    assert set(ranks[0]["train0"]) | set(ranks[0]["val0"]) | set(ranks[1]["train0"]) | set(ranks[1]["val0"]) == set(
        range(64)
    )
    assert ranks[0]["train0"] != ranks[0]["train1"]  # a new seeded order every epoch


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(workers=-2), "--workers must be at least -1"),
        (dict(memory_limit_gb=-1.0), "--memory-limit-gb must not be negative"),
    ],
)
def test_loader_settings_are_validated(values, message):
    from vitkit.training.resolve import make_config

    with pytest.raises(ValueError, match=message):
        make_config(**values)
