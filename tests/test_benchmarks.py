"""Every script in benchmarks/ runs end to end on a tiny setting (a few steps, a small model, data made here
or packaged with vitkit, JSON into a temporary folder), so that a change which breaks a benchmark fails
here instead of the next time someone measures. The numbers themselves are not checked: only that each
script finishes and writes the rows and fields that its readers (report.py, the README) expect."""

from __future__ import annotations

import inspect
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, shared_dataset, subprocess_env, write_class_folders

BENCHMARKS = ROOT / "benchmarks"
HELPERS = {"common.py"}  # imported by the scripts, not run


def run(*args, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """A benchmark command from the project root; fails with its output when it does not exit 0."""
    cmd = [str(a) for a in args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env or subprocess_env(), timeout=timeout)
    output = f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{output}"
    return proc


def script(name: str, *args) -> subprocess.CompletedProcess:
    return run(sys.executable, BENCHMARKS / name, *args)


def folders(tmp_path: Path, per_class: int = 8) -> Path:
    return write_class_folders(tmp_path / "images", per_class=per_class, size=32)


def read(path: Path) -> dict:
    data = json.loads(path.read_text())
    assert data["machine"]["torch"] and data["machine"]["cores"] >= 1
    return data


def positive(row: dict, *keys: str) -> None:
    for key in keys:
        assert isinstance(row[key], float) and row[key] > 0, (key, row)


def cifar_array(tmp_path):
    source = folders(tmp_path, per_class=5)
    packed = tmp_path / "cifar.npz"
    out = script("cifar_array.py", "pack", "--source", source, "--out", packed, "--limit", 4).stdout
    assert "12 images, 3 classes" in out
    folder = tmp_path / "unpacked"
    assert "6 images" in script("cifar_array.py", "unpack", "--file", packed, "--folder", folder, "--limit", 2).stdout
    for name in ("cat", "dog", "fox"):  # the first files of each class, byte for byte
        files = sorted(p.name for p in (folder / name).iterdir())
        assert files == ["000.jpg", "001.jpg"]
        assert all((folder / name / f).read_bytes() == (source / name / f).read_bytes() for f in files)
    again = script("cifar_array.py", "unpack", "--file", packed, "--folder", folder, "--limit", 2).stdout
    assert "already unpacked" in again


def check(tmp_path):
    out = tmp_path / "check.json"
    source = write_class_folders(tmp_path / "images", per_class=20, size=32)  # the seeded test split has every class
    script("check.py", "--data", source, "--minutes", 0.2, "--leaks", 2, "--out", out)
    data = read(out)
    assert data["planted_pairs"] == 2 and data["broken_planted"] == data["broken_found"] == 5
    assert data["broken_kinds"] == {
        "truncated.jpg": "corrupt", "empty.jpg": "empty", "text.jpg": "not-an-image", "cmyk.jpg": "cmyk",
        "deep.png": "16-bit",
    }  # fmt: skip
    for key in ("label_error_recall", "label_error_precision", "pairs_not_planted_false", "train_start_check_seconds"):
        assert key in data


def elastic_seed_spread(tmp_path):
    out = tmp_path / "spread.json"
    script("elastic_seed_spread.py", "--seeds", 1, "--out", out)
    data = read(out)
    assert data["digits_top1_spread"] == data["colours_map_spread"] == 0 and 0 < data["colours_map"][0] <= 1


def data_pipeline(tmp_path):
    out = tmp_path / "data_pipeline.json"
    script(
        "data_pipeline.py", "--data", folders(tmp_path), "--image-size", 32, "--images", 24, "--batch-size", 8,
        "--train-steps", 1, "--rounds", 1, "--models", "vit_micro_patch4_32", "--out", out,
    )  # fmt: skip
    data = read(out)
    pipelines = [r["pipeline"] for r in data["pipelines"]]
    assert pipelines[:3] == ["in-memory", "folder, 1 worker", "folder, 2 workers"] and len(pipelines) == 5
    assert pipelines[4].startswith("packed parquet")
    for row in data["pipelines"]:
        positive(row, "images_per_s")
    (row,) = data["training"]
    assert row["model"] == "vit_micro_patch4_32" and row["size"] == 32 and row["batch"] == 8
    positive(row, "model_only", "streamed", "in_memory")
    assert isinstance(row["decoding_keeps_up"], bool)


def decode_pool(tmp_path):
    out = tmp_path / "decode_pool.json"
    script("decode_pool.py", "--photos", folders(tmp_path, 4), "--images", 12, "--workers", 1, "--json", out)
    rows = read(out)["rows"]
    assert [r["pool"] for r in rows] == ["threads", "processes"]
    for row in rows:
        positive(row, "images_per_s")
        assert row["max_stall_ms"] >= 0


def gpu_collect(tmp_path):
    """gpu.sh's working folder as its parts leave it: part statuses, the tests' JUnit XML, the throughput
    rows and the speedrun's time_to_accuracy JSON."""
    work = tmp_path / "work"
    (work / "speedrun").mkdir(parents=True)
    (work / "parts.tsv").write_text(
        "data\tok\t3\t\ntests\tok\t40\t\nspeedrun\tok\t170\t\nthroughput-vit\tok\t60\t\n"
        "throughput-recipes\ttimeout\t90\tstopped at 90s\n"
    )
    (work / "tests.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_models" name="test_a"/>'
        '<testcase classname="tests.test_models" name="test_b"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_models" name="test_c"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    row = {"name": "vit_small_patch16_224", "batch": 2, "image_size": 224, "train_model_ips": 10.0}
    row |= {"train_e2e_ips": 9.0, "infer_ips": 30.0, "first_step_s": 1.0}
    (work / "throughput-vit.json").write_text(json.dumps({"data": "x", "amp": "bf16", "rows": [row]}))
    result = {"recipe": "cifar-hybrid", "overrides": {"mixup": 0.8}, "params_m": 3.4, "epochs": 3}
    result |= {"train_time_s": 100.0, "best_val_top1": 0.95, "test_top1": 0.95, "curve": [[30, 0.5], [60, 0.94]]}
    speedrun = {"data": "data/cifar10-train", "minutes": 2.5, "results": [result]}
    (work / "speedrun" / "cifar10-train-2.5min.json").write_text(json.dumps(speedrun))
    out = tmp_path / "gpu.json"
    script("gpu_collect.py", "--work", work, "--target", 0.94, "--json", out, "--elapsed", 400, "--deadline", 550)
    data = read(out)
    assert data["tests"]["tests"] == 3 and data["tests"]["failed"] == ["tests.test_models::test_b"]
    assert data["speedrun"]["time_to_target_s"] == 60 and data["speedrun"]["target_reached"] is True
    assert data["speedrun"]["wall_s"] == 170 and data["speedrun"]["data"] == "cifar10-train"
    assert [r["recipe"] for r in data["speedrun"]["recipes"]] == ["cifar-hybrid"]
    throughput = data["throughput"]
    assert [r["name"] for r in throughput["rows"]] == ["vit_small_patch16_224"]
    assert throughput["parts"]["throughput-recipes"]["status"] == "timeout"
    assert "cifar-hybrid" in throughput["not_measured"] and "vit_small_patch16_224" not in throughput["not_measured"]


def gpu_sh(tmp_path):
    """bash -n, then its documented CPU dry run with the slow parts skipped: the data part unpacks a small
    packed file and the collector writes gpu.json and gpu.log where RESULTS says."""
    run("bash", "-n", BENCHMARKS / "gpu.sh")
    packed = tmp_path / "cifar.npz"
    script("cifar_array.py", "pack", "--source", folders(tmp_path, 3), "--out", packed)
    data_dir, results = tmp_path / "data", tmp_path / "results"
    env = subprocess_env() | {
        "DEVICE": "cpu", "COMPILE": "0", "SKIP": "tests speedrun throughput", "DATA_FILE": str(packed),
        "DATA_DIR": str(data_dir), "RESULTS": str(results), "PYTHON": sys.executable,
    }  # fmt: skip
    env.pop("OUT", None)
    run("bash", BENCHMARKS / "gpu.sh", env=env)
    gpu = read(results / "gpu.json")
    assert gpu["data"]["data"]["status"] == "ok" and gpu["data"]["data-small"]["status"] == "ok"
    assert gpu["tests"]["status"] == "skipped" and gpu["speedrun"]["status"] == "skipped"
    assert "vit_small_patch16_224" in gpu["throughput"]["not_measured"]
    assert "== data: ok" in (results / "gpu.log").read_text()
    assert sorted(p.name for p in (data_dir / "cifar10-train" / "dog").iterdir()) == ["000.jpg", "001.jpg", "002.jpg"]
    assert not (data_dir / "gpu-work").exists()


def inference(tmp_path, digits_run):
    out = tmp_path / "inference.json"
    script(
        "inference.py", "--model", "vit_tiny_patch4_32", "--batch-size", 2, "--seconds", 0.1, "--rounds", 1,
        "--latency-repeats", 2, "--checkpoint", digits_run[0], "--calibration-images", 16, "--json", out,
    )  # fmt: skip
    data = read(out)
    rows = {r["path"]: r for r in data["rows"]}
    paths = ["transformers fp32", "vitkit PyTorch fp32", "vitkit PyTorch bf16", "vitkit ONNX Runtime fp32"]
    paths += ["vitkit ONNX Runtime int8", "vitkit default (vitkit.load)"]
    assert set(paths) <= set(rows)
    for row in rows.values():
        positive(row, "ips", "speedup_vs_transformers_fp32", "p50_ms")
    assert rows["transformers fp32"]["speedup_vs_transformers_fp32"] == 1.0
    assert rows["vitkit PyTorch fp32"]["max_abs_logit_diff"] < 1e-4
    # agreement on the trained digits run's test split: fp32 paths agree with fp32 entirely
    assert data["agreement_measured_on"]["checkpoint"]["split"] == "test"
    for name in paths[1:]:
        assert 0.5 < rows[name]["top1_agreement"] <= 1
    assert rows["vitkit PyTorch fp32"]["top1_agreement"] == rows["vitkit ONNX Runtime fp32"]["top1_agreement"] == 1


def keras_parity(tmp_path):
    shared_dataset("cifar100-dev")  # its images go through both models
    out = tmp_path / "keras_parity.json"
    script("keras_parity.py", "--keras-python", sys.executable, "--families", "fnet", "--images", 2, "--out", out)
    (row,) = read(out)["rows"]
    assert row["preset"] == "keras-fnet-cifar100" and row["max_abs_logit_diff"] < 1e-4 and row["same_top1"] == 1


def multilabel(tmp_path):
    shared_dataset("movie-posters")
    out = tmp_path / "multilabel.json"
    script(
        "multilabel.py", "--limit", 200, "--minutes", 0.05, "--parity-minutes", 0.05, "--recipes", "multilabel-hybrid",
        "--work", tmp_path / "work", "--out", out,
    )  # fmt: skip
    data = read(out)
    assert [r["recipe"] for r in data["rows"]] == ["label frequency", "multilabel-hybrid"]
    assert data["held_out"]["posters"] + data["held_out"]["training_posters"] == 200
    for row in data["rows"]:
        assert 0 < row["map_macro"] <= 1 and 0 < row["map_micro"] <= 1
    assert data["hf_pipeline_parity"]["agrees"] is True
    strategies = {row["thresholds"]: row for row in data["thresholds"]["rows"]}
    assert sum(row["default"] for row in strategies.values()) == 1 and "flat 0.5" in strategies
    assert all(row["mean_predicted_labels"] >= 0 and row["mean_true_labels"] > 0 for row in strategies.values())


def ood(tmp_path):
    for name in ("cifar10-train", "cifar100-dev", "movie-posters", "flowers-mini"):
        shared_dataset(name)
    out = tmp_path / "ood.json"
    script(
        "ood.py", "--cifar-minutes", 0.05, "--flowers-minutes", 0.05, "--per-class", 20, "--limit", 20, "--no-parity",
        "--flowers-preset", "cifar-resnet", "--work", tmp_path / "work", "--out", out,
    )  # fmt: skip
    data = read(out)
    assert data["models"]["flowers"]["preset"] == "cifar-resnet"
    assert json.loads((tmp_path / "work" / "flowers" / "best" / "config.json").read_text())["family"] == "resnet"
    # both recipes train with flips, so their scores read each image with its mirror
    assert data["cifar10"]["mirror"] and data["flowers"]["mirror"]
    cases = {(r["model"], r["ood"], r["method"]) for r in data["rows"]}
    assert cases >= {("cifar10", "near", "knn"), ("cifar10", "far", "energy"), ("flowers", "far", "msp")}
    for row in data["rows"]:
        assert 0 <= row["auroc"] <= 1 and 0 <= row["fpr95"] <= 1
    assert data["reject_unknown"]["posters"] == 20 and 0 <= data["reject_unknown"]["posters_rejected"] <= 1
    assert set(data["calibration"]["cifar10"]["after"]) == {"ece", "nll", "brier"}


def recipe_parity(tmp_path):
    out = tmp_path / "parity"
    script(
        "recipe_parity.py", "--data", folders(tmp_path), "--epochs", 2, "--set", "batch_size=8",
        "--ablation", "schedule", "whitening_sample", "--out", out,
    )  # fmt: skip
    rows = {row["recipe"]: row for row in map(read, sorted(out.glob("*.json")))}
    labels = ["before", "before + schedule", "before + whitening_sample", "all fixed"]
    assert set(rows) == {f"cifar-fast {label} batch_size=8" for label in labels}
    for row in rows.values():
        assert row["epochs"] == 2 and [r["epoch"] for r in row["per_epoch"]] == [1, 2] and row["seed"] == 0
        assert 0 <= row["test_top1"] <= 1 and 0 <= row["tta_top1"] <= 1 and row["split"] == "val"
        assert row["source"]["name"] == "airbench94" and row["source"]["top1"] == 0.9401
        assert row["machine"]["cpu"] and row["machine"]["flags_class"]
    assert rows["cifar-fast all fixed batch_size=8"]["overrides"] == {"batch_size": 8}
    assert {r["ablation"] for r in rows.values()} == {"before", "schedule", "whitening_sample", "all fixed"}
    assert rows["cifar-fast before + schedule batch_size=8"]["overrides"]["schedule"] == "triangle"
    # a recipe that follows no published source: trained and reported the same way, with no source beside it
    hybrid = tmp_path / "hybrid"
    script("recipe_parity.py", "--recipe", "cifar-hybrid", "--data", folders(tmp_path), "--epochs", 3,
           "--eval-every", 2, "--set", "batch_size=8", "--out", hybrid)  # fmt: skip
    (row,) = map(read, hybrid.glob("*.json"))
    assert row["preset"] == "cifar-hybrid" and row["source"] is None and row["epochs"] == 3 and row["ablation"] is None
    assert [r["epoch"] for r in row["per_epoch"]] == [2, 3] and 0 <= row["tta_top1"] <= 1


def jpeg_cost(tmp_path):
    out = tmp_path / "jpeg"
    script(
        "jpeg_cost.py", "--data", shared_dataset("cifar100-dev") / "data", "--classes", 2, "--per-class", 60,
        "--epochs", 1, "--set", "batch_size=32", "--out", out,
    )  # fmt: skip
    (path,) = out.glob("jpeg-cost-cifar-fast-batch-size-32-1ep-seed0-*.json")
    data = read(path)
    png, jpeg = data["rows"]["png"], data["rows"]["jpeg75"]
    assert png["data"].endswith("written as png files") and jpeg["data"].endswith("written as jpeg75 files")
    assert data["cost_top1"] == png["test_top1"] - jpeg["test_top1"] and png["split"] == jpeg["split"] == "test"
    assert png["per_epoch"][0]["epoch"] == 1 and 0 <= jpeg["tta_top1"] <= 1


def vs_airbench(tmp_path):
    out = tmp_path / "airbench"
    script(
        "vs_airbench.py", "--data", folders(tmp_path), "--widths", 8, 16, 16, "--epochs", 2, "--batch-size", 8,
        "--out", out,
    )  # fmt: skip
    (path,) = out.glob("vs-airbench-8-16-16-images-2ep-seed0-*.json")
    data = read(path)
    assert [r["epoch"] for r in data["transcription"]["per_epoch"]] == [1, 2]
    assert [r["epoch"] for r in data["vitkit"]["per_epoch"]] == [1, 2]
    assert data["vitkit"]["overrides"] == {"model_args": {"widths": [8, 16, 16]}, "batch_size": 8}
    assert data["gap_tta_top1"] == data["vitkit"]["tta_top1"] - data["transcription"]["tta_top1"]


def report(tmp_path):
    """The benchmarks page from the project's own results: every kind of saved JSON still renders."""
    page = tmp_path / "benchmarks.md"
    script("report.py", "--out", page)
    text = page.read_text()
    results = BENCHMARKS / "results"
    expected = {
        "## Time to accuracy": any(results.glob("time_to_accuracy/*.json")),
        "## Throughput per preset": any(results.glob("throughput*.json")),
        "## Seed presets against Keras": any(results.glob("vs_keras*.json")),
        "## ViT against transformers": (results / "vs_transformers.json").is_file(),
        "## Inference": (results / "inference.json").is_file(),
        "## Serving": (results / "serve_load.json").is_file(),
    }
    assert {heading: heading in text for heading in expected} == expected
    assert sum(expected.values()) >= 5
    dated_rows = [line for line in text.splitlines() if line.startswith("| 20")]
    assert len(dated_rows) > 20
    # recipe parity: an ablation's gains against the recipe as it was; a recipe's spread over seeds
    parity = [read(path) for path in results.glob("recipe_parity/*.json")]

    def run_of(row: dict) -> tuple:  # the rows one ablation or one seed spread compares: same machine and data
        m = row["machine"]
        return row["data"], row["epochs"], m["cpu"], m.get("cpu_family"), m["cores"], m.get("flags_class")

    def ablation_of(row: dict) -> tuple:  # one ablation: one run of recipe_parity.py --ablation
        return run_of(row), row["preset"], row["seed"], row["machine"]["date"]

    for row in parity:
        if row.get("ablation") not in (None, "before"):
            before = next(r for r in parity if r.get("ablation") == "before" and ablation_of(r) == ablation_of(row))
            gain = f"| {row['ablation']} | {row['test_top1']:.4f} | {row['tta_top1']:.4f} |"
            assert f"{gain} {row['test_top1'] - before['test_top1']:+.4f} |" in text
    seeds: dict[tuple, list[float]] = {}
    for row in parity:
        if row.get("ablation") is None:
            seeds.setdefault((row["recipe"], run_of(row)), []).append(row["tta_top1"])
    for values in seeds.values():
        if len(values) > 1:
            assert f"{statistics.fmean(values):.4f} ({min(values):.4f}-{max(values):.4f})" in text


def serve_load(tmp_path):
    out = tmp_path / "serve_load.json"
    script(
        "serve_load.py", "--train-model", "vit_micro_patch4_32", "--label", "tiny", "--photos", folders(tmp_path, 2),
        "--clients", 1, 4, "--seconds", 0.5, "--abuse", "thin", "--repeats", 1, "--out", out,
    )  # fmt: skip
    data = read(out)
    assert [(r["key"], r["failures"]) for r in data["load"]] == [("tiny/1", 0), ("tiny/4", 0)]
    for row in data["load"]:
        assert row["requests"] > 0
        positive(row, "req_per_s", "p50_ms")
    (abuse,) = data["abuse"]
    assert abuse["key"] == "tiny/thin" and abuse["abusive_status"] and all(s >= 400 for s in abuse["abusive_status"])


def serve_isolation(tmp_path):
    out = tmp_path / "serve_isolation.json"
    script(
        "serve_isolation.py", "--label", "tiny", "--model", "vit_micro_patch4_32", "--photos", folders(tmp_path, 2),
        "--predict-clients", 2, "--explain-clients", 1, "--seconds", 0.5, "--out", out,
    )  # fmt: skip
    rows = {r["explain_clients"]: r for r in read(out)["rows"]}
    assert set(rows) == {0, 1} and all(r["failures"] == 0 and r["label"] == "tiny" for r in rows.values())
    assert rows[1]["explain_per_s"] > 0 and rows[0]["rss_high_water_mib"] >= rows[0]["rss_at_rest_mib"] > 0
    positive(rows[0], "predict_per_s", "predict_p50_ms")


def throughput(tmp_path):
    out = tmp_path / "throughput.json"
    script(
        "throughput.py", "--presets", "--models", "vit_micro_patch4_32", "--data", "digits", "--batch-size", 8,
        "--rounds", 1, "--steps", 1, "--peak-size", 256, "--json", out,
    )  # fmt: skip
    data = read(out)
    assert data["data"] == "digits" and data["amp"] == "off"
    (row,) = data["rows"]
    assert row["name"] == "vit_micro_patch4_32" and row["batch"] == 8
    positive(row, "params_m", "train_model_ips", "train_e2e_ips", "infer_ips", "train_gflop_per_image", "peak_gflops")
    positive(row, "peak_share_pct", "channels_last_gain")


def time_to_accuracy(tmp_path):
    out = tmp_path / "tta"
    script(
        "time_to_accuracy.py", "--data", "digits", "--minutes", 0.01, "--recipes", "vit_micro_patch4_32",
        "--train-limit", 300, "--out", out,
    )  # fmt: skip
    data = read(out / "digits-0.01min.json")
    (row,) = data["results"]
    assert row["recipe"] == "vit_micro_patch4_32" and row["overrides"] == {"train_limit": 300}
    assert row["epochs"] >= 1 and len(row["curve"]) == row["epochs"]
    assert 0 <= row["test_top1"] <= 1 and 0 <= row["final_top1"] <= 1
    assert 0 <= row["test_top1_multicrop_tta"] <= 1
    assert row["best_val_top1"] == max(v for _, v in row["curve"])
    positive(row, "images_per_s", "train_gflop_per_image", "peak_share")
    assert row["peak_share"] < 1 and data["peak_gflops"]["fp32"] > 0
    seeds = tmp_path / "seeds"
    script(
        "time_to_accuracy.py", "--data", "digits", "--minutes", 0.01, "--recipes", "cifar-fast", "vit_micro_patch4_32",
        "--train-limit", 300, "--seeds", 2, "--set", "batch_size=32", "--out", seeds,
    )  # fmt: skip
    data = read(seeds / "digits-0.01min.json")
    assert sorted(r["recipe"] for r in data["results"]) == [
        f"{recipe} batch_size=32 seed={seed}" for recipe in ("cifar-fast", "vit_micro_patch4_32") for seed in (0, 1)
    ]
    summary = {s["recipe"]: s for s in data["seed_summary"]}
    assert set(summary) == {
        "cifar-fast train_limit=300 batch_size=32",
        "vit_micro_patch4_32 train_limit=300 batch_size=32",
    }
    for entry in summary.values():
        assert entry["seeds"] == 2 and entry["test_top1_min"] <= entry["test_top1_mean"] <= entry["test_top1_max"]
    assert (out / "digits-0.01min.png").stat().st_size > 0
    assert (out / "digits-0.01min.csv").read_text().startswith("recipe,time_s,val_top1")


def vs_keras(tmp_path):
    """vitkit's side only (--skip-keras): the Keras reference is a separate keras+jax environment and a
    peer script outside the project, which CI does not have."""
    out = tmp_path / "vs_keras.json"
    script(
        "vs_keras.py", "--skip-keras", "--models", "mixer", "--data", folders(tmp_path), "--batch-size", 8,
        "--steps", 1, "--json", out,
    )  # fmt: skip
    (row,) = read(out)["rows"]
    assert row["preset"] == "keras-mixer-cifar100" and row["batch"] == 8
    assert row["keras_ips"] is None and row["speedup"] is None
    assert row["vitkit_params"] > 0
    positive(row, "vitkit_ips", "vitkit_fp32_ips", "vitkit_first_step_s")


def vs_transformers(tmp_path):
    out = tmp_path / "vs_transformers.json"
    script(
        "vs_transformers.py", "--model", "vit_tiny_patch4_32", "--image-size", 32, "--batch-size", 4,
        "--rounds", 1, "--steps", 1, "--json", out,
    )  # fmt: skip
    data = read(out)
    rows = {r["path"]: r for r in data["rows"]}
    reference = rows["transformers (fp32, its default)"]
    assert "vitkit fp32" in rows and reference["train_x"] == reference["infer_x"] == 1.0
    for row in rows.values():
        positive(row, "train_ips", "infer_ips", "train_x", "infer_x")


CASES = {
    "check.py": check,
    "cifar_array.py": cifar_array,
    "data_pipeline.py": data_pipeline,
    "elastic_seed_spread.py": elastic_seed_spread,
    "decode_pool.py": decode_pool,
    "gpu.sh": gpu_sh,
    "gpu_collect.py": gpu_collect,
    "inference.py": inference,
    "jpeg_cost.py": jpeg_cost,
    "keras_parity.py": keras_parity,
    "multilabel.py": multilabel,
    "ood.py": ood,
    "recipe_parity.py": recipe_parity,
    "report.py": report,
    "serve_isolation.py": serve_isolation,
    "serve_load.py": serve_load,
    "throughput.py": throughput,
    "time_to_accuracy.py": time_to_accuracy,
    "vs_airbench.py": vs_airbench,
    "vs_keras.py": vs_keras,
    "vs_transformers.py": vs_transformers,
}


def test_every_benchmark_has_a_tiny_case():
    scripts = {p.name for p in BENCHMARKS.iterdir() if p.suffix in (".py", ".sh")} - HELPERS
    assert scripts == set(CASES), "add a tiny case to CASES for each new script in benchmarks/"


# Each case is a subprocess that imports torch: slow-marked, so pytest-xdist starts them first, one per worker.
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_tiny(name, tmp_path, request):
    case = CASES[name]
    # a case names the fixtures it needs beyond tmp_path as its parameters, as a test does
    fixtures = {arg: request.getfixturevalue(arg) for arg in inspect.signature(case).parameters if arg != "tmp_path"}
    case(tmp_path, **fixtures)
