"""Inference precision: what '--precision auto' picks on each kind of hardware, the bf16 agreement record
that can overrule it, and INT8 ONNX exports guarded by their agreement with fp32."""

import json
import re
import shutil
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import run_vitkit
from PIL import Image
from serving import running_server

import vitkit
from vitkit.data.builtin import load_digits_dataset
from vitkit.errors import VitkitError
from vitkit.runfiles import BF16_AGREEMENT as BF16_RECORD


def checkpoint_copy(digits_run, tmp_path):
    """The digits run's best checkpoint in a folder of the test's own (records get written into it)."""
    return shutil.copytree(digits_run[0] / "best", tmp_path / "best")


def measured_copy(digits_run, tmp_path, agreement=0.999, split="test") -> Path:
    """The digits run's best checkpoint with a bf16 record of the given agreement (a run trained on a CPU
    without native bf16 has none)."""
    ckpt = checkpoint_copy(digits_run, tmp_path)
    record = {"precision": "bf16", "split": split, "images": 359, "measure": "top-1", "agreement": agreement,
              "top1_agreement": agreement, "top1_fp32": 0.5, "top1": 0.5, "top1_delta": 0.0}  # fmt: skip
    (ckpt / BF16_RECORD).write_text(json.dumps(record))
    return ckpt


@pytest.mark.parametrize(
    "kind, precision, backend", [("AMX", "bf16", "torch"), ("AVX512-BF16", "bf16", "torch"), (None, "fp32", None)]
)
def test_auto_precision_follows_the_cpu_probe(digits_run, tmp_path, monkeypatch, kind, precision, backend):
    monkeypatch.setattr("vitkit.inference.precision.cpu_bf16_kind", lambda: kind)
    ckpt = measured_copy(digits_run, tmp_path)
    clf = vitkit.load(ckpt, device="cpu")
    assert clf.precision == precision
    assert clf.backend == (backend or vitkit.inference.default_backend())
    assert (kind or "no native bf16") in clf.precision_reason
    # asked for explicitly, a precision is taken whatever the probe says
    assert vitkit.load(ckpt, device="cpu", precision="fp32").precision == "fp32"
    assert vitkit.load(ckpt, device="cpu", precision="bf16").precision == "bf16"


def test_the_cpu_probe_can_be_forced_to_each_class(digits_run, tmp_path, monkeypatch):
    """VITKIT_CPU_BF16 stands in for the CPU's flags, so one machine runs the suite as each class would."""
    ckpt = measured_copy(digits_run, tmp_path)
    for forced, precision in (("none", "fp32"), ("amx", "bf16"), ("AVX512-BF16", "bf16")):
        monkeypatch.setenv("VITKIT_CPU_BF16", forced)
        clf = vitkit.load(ckpt, device="cpu", backend="torch")
        assert clf.precision == precision, (forced, clf.precision_reason)
    monkeypatch.setenv("VITKIT_CPU_BF16", "avx2")
    with pytest.raises(VitkitError, match="VITKIT_CPU_BF16='avx2': use none, AMX or AVX512-BF16"):
        vitkit.load(ckpt, device="cpu")


def test_auto_runs_bf16_only_with_a_held_out_record(digits_run, tmp_path, monkeypatch):
    """The guard holds by default: no record, or one measured on the training split, keeps auto in fp32."""
    monkeypatch.setenv("VITKIT_CPU_BF16", "AMX")
    ckpt = checkpoint_copy(digits_run, tmp_path)
    (ckpt / BF16_RECORD).unlink(missing_ok=True)
    unmeasured = vitkit.load(ckpt, device="cpu")
    assert unmeasured.precision == "fp32" and "not measured" in unmeasured.precision_reason
    assert f"vitkit eval {ckpt} --precision bf16" in unmeasured.precision_reason
    on_train = measured_copy(digits_run, tmp_path / "train", split="train")
    refused = vitkit.load(on_train, device="cpu")
    assert refused.precision == "fp32" and "train split, not held-out" in refused.precision_reason
    # vitkit eval reports a training-split agreement but does not record it
    proc = run_vitkit("eval", str(ckpt), "--precision", "bf16", "--split", "train", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["agreement"]["split"] == "train" and not (ckpt / BF16_RECORD).exists()
    assert "not recorded" in proc.stderr


TINY_VIT = ("--model-arg", "depth=1", "--model-arg", "embed_dim=16", "--model-arg", "num_heads=1", "--image-size", "8")


@pytest.mark.parametrize("forced", ["AMX", "none"])
def test_a_fresh_run_is_guarded_from_its_first_predict(tmp_path, monkeypatch, forced):
    """A run on hardware where auto would pick bf16 measures its agreement on the reported split and
    records it in best/, so its first `vitkit predict` says what was measured; elsewhere it measures nothing."""
    monkeypatch.setenv("VITKIT_CPU_BF16", forced)
    out = tmp_path / "run"
    trained = run_vitkit("train", *TINY_VIT, "--epochs", "1", "--no-plots", "--out", str(out), "--threads", "1")
    assert trained.returncode == 0, trained.stderr
    results = json.loads((out / "results.json").read_text())
    if forced == "none":
        assert "bf16_agreement" not in results and not (out / "best" / BF16_RECORD).exists()
        return
    record = json.loads((out / "best" / BF16_RECORD).read_text())
    assert record == {**results["bf16_agreement"], "data": "digits"}
    assert record["split"] == results["split"] == "test" and record["images"] == 359
    assert re.search(r"bf16 agrees with fp32 on [\d.]+% of 359 test images.*--precision auto", trained.stderr)
    image = tmp_path / "digit.png"
    Image.fromarray(load_digits_dataset(seed=0).test.images[0, 0].numpy()).save(image)
    predicted = run_vitkit("predict", str(out), str(image))
    assert predicted.returncode == 0, predicted.stderr
    assert "not measured" not in predicted.stderr
    assert f"agrees with fp32 on {record['agreement']:.2%} of 359 test images" in predicted.stderr


def test_a_multilabel_run_records_the_agreement_of_its_label_sets(tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_CPU_BF16", "AVX512-BF16")
    photos = tmp_path / "photos"
    (photos / "Images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        pixels = np.clip(rng.normal(60 + 15 * i, 20, (12, 10, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(photos / "Images" / f"tt{i}.jpg")
        rows.append(f'tt{i},"{["a", "b"] if i % 2 else ["a"]}"')
    table = tmp_path / "labels.csv"
    table.write_text("Id,Genre\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run"
    trained = run_vitkit(
        "train", "--data", str(photos), "--labels", str(table), *TINY_VIT, "--epochs", "1", "--batch-size", "4",
        "--val-split", "0.25", "--no-plots", "--out", str(out), "--threads", "1",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    record = json.loads((out / "best" / BF16_RECORD).read_text())
    val_images = int(re.search(r"splits: train \d+, val (\d+)", trained.stderr).group(1))
    assert record["measure"] == "label sets" and record["split"] == "val" and record["images"] == val_images
    clf = vitkit.load(out, device="cpu")
    assert "same label set as fp32" in clf.precision_reason
    assert clf.precision == ("bf16" if record["agreement"] >= 0.995 else "fp32")
    # vitkit eval measures and records it too
    (out / "best" / BF16_RECORD).unlink()
    evaluated = run_vitkit("eval", str(out), "--precision", "bf16", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["agreement"]["measure"] == "label sets"
    assert json.loads((out / "best" / BF16_RECORD).read_text())["agreement"] == record["agreement"]


def test_bf16_runs_under_autocast_and_fp32_does_not(digits_run):
    images = load_digits_dataset(seed=0).test.images[:64]
    fp32 = vitkit.load(digits_run[0], device="cpu", backend="torch", precision="fp32")
    bf16 = vitkit.load(digits_run[0], device="cpu", backend="torch", precision="bf16")
    with torch.inference_mode():
        x = fp32.input_transform.for_inference(images)
        expected_fp32 = (fp32.model(x).float() / fp32.temperature).softmax(-1)  # calibrated
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_logits = fp32.model(x)
        expected_bf16 = (bf16_logits.float() / bf16.temperature).softmax(-1)
    assert torch.equal(fp32.predict_tensor(images), expected_fp32)
    assert torch.equal(bf16.predict_tensor(images), expected_bf16)
    assert not torch.equal(expected_bf16, expected_fp32)


def test_eval_in_bf16_records_its_agreement_and_auto_obeys_the_record(digits_run, tmp_path, monkeypatch):
    ckpt = checkpoint_copy(digits_run, tmp_path)
    proc = run_vitkit("eval", str(ckpt), "--precision", "bf16", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    agreement = report["agreement"]
    # the record's fp32 side is the run's reported metric; its bf16 side is this evaluation's
    assert agreement["top1_fp32"] == pytest.approx(digits_run[1]["metrics"]["top1"], abs=1e-9)
    assert agreement["top1"] == pytest.approx(report["top1"], abs=1e-9)
    assert json.loads((ckpt / BF16_RECORD).read_text())["top1_agreement"] == agreement["top1_agreement"]

    monkeypatch.setattr("vitkit.inference.precision.cpu_bf16_kind", lambda: "AMX")
    chosen = vitkit.load(ckpt, device="cpu")
    assert chosen.precision == ("bf16" if agreement["top1_agreement"] >= 0.995 else "fp32")
    assert f"{agreement['top1_agreement']:.2%}" in chosen.precision_reason
    for low in (0.9, 0.99, 0.9949):  # under the documented 99.5%
        (ckpt / BF16_RECORD).write_text(json.dumps({**agreement, "agreement": low, "top1_agreement": low}))
        refused = vitkit.load(ckpt, device="cpu")
        assert refused.precision == "fp32" and f"{low:.2%}" in refused.precision_reason, refused.precision_reason
    (ckpt / BF16_RECORD).write_text(json.dumps({**agreement, "agreement": 0.995, "top1_agreement": 0.995}))
    assert vitkit.load(ckpt, device="cpu").precision == "bf16"


@pytest.mark.slow  # exports, quantizes or serves end to end
def test_int8_export_is_refused_below_the_agreement_threshold(digits_run, tmp_path):
    out, folder = tmp_path / "digits-int8.onnx", tmp_path / "exports"
    folder.mkdir()
    refused = run_vitkit("export", str(digits_run[0]), str(out), "--quantize", "int8", "--min-agreement", "1")
    forced = run_vitkit(
        "export", str(digits_run[0]), str(folder), "--quantize", "int8", "--min-agreement", "1", "--force"
    )
    assert forced.returncode == 0, forced.stderr
    assert (folder / f"{digits_run[0].name}-int8.onnx").is_file()  # into a folder: named after the run
    agreement = json.loads(forced.stdout)["agreement"]["top1_agreement"]
    assert agreement < 1  # the digits model is barely trained: INT8 changes some of its close calls
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "refused" in refused.stderr and f"{agreement:.2%}" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    # without --min-agreement the documented 99.5% decides
    default = run_vitkit("export", str(digits_run[0]), str(out), "--quantize", "int8")
    assert (default.returncode == 0) == (agreement >= 0.995), (agreement, default.stderr)


@pytest.mark.slow  # exports, quantizes or serves end to end
def test_int8_export_is_accepted_by_load_predict_and_serve_with_the_promised_labels(digits_run, tmp_path):
    out = tmp_path / "digits-int8.onnx"
    proc = run_vitkit("export", str(digits_run[0]), str(out), "--quantize", "int8", "--min-agreement", "0.9")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.with_suffix(".agreement.json").read_text())
    assert report == json.loads(proc.stdout)["agreement"]
    assert report["split"] == "test" and report["calibration"]["images"] == 256
    assert re.search(r"int8 agrees with fp32 on [\d.]+% of \d+ test images", proc.stderr)

    # vitkit.load gives the INT8 model the labels the report promised: its accuracy and agreement
    test = load_digits_dataset(seed=0).test
    int8 = vitkit.load(out)
    fp32 = vitkit.load(digits_run[0], device="cpu", precision="fp32")
    assert int8.precision == "int8" and int8.meta["agreement"] == report
    int8_labels = int8.predict_tensor(test.images).argmax(1)
    fp32_labels = fp32.predict_tensor(test.images).argmax(1)
    assert (int8_labels == test.labels).sum().item() / len(test) == pytest.approx(report["top1"], abs=1e-12)
    assert (int8_labels == fp32_labels).sum().item() / len(test) == pytest.approx(report["top1_agreement"], abs=1e-12)

    # vitkit predict on image files: the same answers as vitkit.load, and the precision in the metadata
    paths = [tmp_path / f"digit{i}.png" for i in range(6)]
    for path, image in zip(paths, test.images[:6]):
        Image.fromarray(image[0].numpy()).save(path)
    proc = run_vitkit("predict", str(out), *map(str, paths), "--format", "json", "--topk", "1")
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed["precision"] == "int8" and printed["backend"] == "onnxruntime"
    in_python = int8.predict(list(map(str, paths)), topk=1)
    assert [r["predictions"] for r in printed["results"]] == [r["predictions"] for r in in_python]

    # vitkit serve says what it runs and answers as vitkit.load does
    with running_server(out, log=tmp_path / "serve.log") as (base, _):
        health = json.loads(urllib.request.urlopen(f"{base}/health", timeout=30).read())
        assert health["precision"] == "int8" and health["backend"] == "onnxruntime"
        files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
        served = httpx.post(f"{base}/predict", files=files, timeout=60).json()
    assert [r["predictions"][0]["label"] for r in served] == [r["predictions"][0]["label"] for r in in_python]
    assert "int8" in (tmp_path / "serve.log").read_text()


@pytest.mark.slow  # exports, quantizes or serves end to end
def test_serve_runs_its_batches_in_the_precision_it_chose(digits_run, tmp_path):
    test = load_digits_dataset(seed=0).test
    paths = [tmp_path / f"digit{i}.png" for i in range(6)]
    for path, image in zip(paths, test.images[:6]):
        Image.fromarray(image[0].numpy()).save(path)
    bf16 = vitkit.load(digits_run[0], device="cpu", precision="bf16").predict(list(map(str, paths)), topk=3)
    fp32 = vitkit.load(digits_run[0], device="cpu", precision="fp32").predict(list(map(str, paths)), topk=3)
    with running_server(digits_run[0], "--precision", "bf16", "--topk", "3", log=tmp_path / "serve.log") as (base, _):
        health = json.loads(urllib.request.urlopen(f"{base}/health", timeout=30).read())
        files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
        served = httpx.post(f"{base}/predict", files=files, timeout=60).json()
    assert health["precision"] == "bf16" and health["precision_reason"] == "bf16 as asked"
    scores = [[p["score"] for p in r["predictions"]] for r in served]
    assert scores == [[p["score"] for p in r["predictions"]] for r in bf16]
    assert scores != [[p["score"] for p in r["predictions"]] for r in fp32]
