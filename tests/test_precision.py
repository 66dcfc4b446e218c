"""Inference precision: what '--precision auto' picks on each kind of hardware, the bf16 agreement record
that can overrule it, and INT8 ONNX exports guarded by their agreement with fp32."""

import json
import re
import shutil
import urllib.request

import httpx
import pytest
import torch
from conftest import run_vitkit
from PIL import Image
from serving import running_server

import vitkit
from vitkit.data.builtin import load_digits_dataset
from vitkit.errors import VitkitError
from vitkit.eval.agreement import BF16_RECORD


def checkpoint_copy(digits_run, tmp_path):
    """The digits run's best checkpoint in a folder of the test's own (records get written into it)."""
    return shutil.copytree(digits_run[0] / "best", tmp_path / "best")


@pytest.mark.parametrize(
    "kind, precision, backend", [("AMX", "bf16", "torch"), ("AVX512-BF16", "bf16", "torch"), (None, "fp32", None)]
)
def test_auto_precision_follows_the_cpu_probe(digits_run, monkeypatch, kind, precision, backend):
    monkeypatch.setattr("vitkit.runtime.cpu_bf16_kind", lambda: kind)
    clf = vitkit.load(digits_run[0], device="cpu")
    assert clf.precision == precision
    assert clf.backend == (backend or vitkit.api.default_backend())
    assert (kind or "no native bf16") in clf.precision_reason
    # asked for explicitly, a precision is taken whatever the probe says
    assert vitkit.load(digits_run[0], device="cpu", precision="fp32").precision == "fp32"
    assert vitkit.load(digits_run[0], device="cpu", precision="bf16").precision == "bf16"


def test_the_cpu_probe_can_be_forced_to_each_class(digits_run, monkeypatch):
    """VITKIT_CPU_BF16 stands in for the CPU's flags, so one machine runs the suite as each class would."""
    for forced, precision in (("none", "fp32"), ("amx", "bf16"), ("AVX512-BF16", "bf16")):
        monkeypatch.setenv("VITKIT_CPU_BF16", forced)
        clf = vitkit.load(digits_run[0], device="cpu", backend="torch")
        assert clf.precision == precision, (forced, clf.precision_reason)
    monkeypatch.setenv("VITKIT_CPU_BF16", "avx2")
    with pytest.raises(VitkitError, match="VITKIT_CPU_BF16='avx2': use none, AMX or AVX512-BF16"):
        vitkit.load(digits_run[0], device="cpu")


def test_bf16_runs_under_autocast_and_fp32_does_not(digits_run):
    images = load_digits_dataset(seed=0).test.images[:64]
    fp32 = vitkit.load(digits_run[0], device="cpu", backend="torch", precision="fp32")
    bf16 = vitkit.load(digits_run[0], device="cpu", backend="torch", precision="bf16")
    with torch.inference_mode():
        x = fp32.input_transform.for_inference(images)
        expected_fp32 = fp32.model(x).float().softmax(-1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_logits = fp32.model(x)
        expected_bf16 = bf16_logits.float().softmax(-1)
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

    monkeypatch.setattr("vitkit.runtime.cpu_bf16_kind", lambda: "AMX")
    chosen = vitkit.load(ckpt, device="cpu")
    assert chosen.precision == ("bf16" if agreement["top1_agreement"] >= 0.995 else "fp32")
    assert f"{agreement['top1_agreement']:.2%}" in chosen.precision_reason
    for low in (0.9, 0.99):
        (ckpt / BF16_RECORD).write_text(json.dumps({**agreement, "top1_agreement": low}))
        refused = vitkit.load(ckpt, device="cpu")
        assert refused.precision == "fp32" and f"{low:.2%}" in refused.precision_reason, refused.precision_reason
    (ckpt / BF16_RECORD).write_text(json.dumps({**agreement, "top1_agreement": 0.999}))
    assert vitkit.load(ckpt, device="cpu").precision == "bf16"


@pytest.mark.slow  # exports, quantizes or serves end to end
def test_int8_export_is_refused_below_the_agreement_threshold(digits_run, tmp_path):
    out = tmp_path / "digits-int8.onnx"
    refused = run_vitkit("export", str(digits_run[0]), str(out), "--quantize", "int8", "--min-agreement", "1")
    forced = run_vitkit("export", str(digits_run[0]), str(out), "--quantize", "int8", "--min-agreement", "1", "--force")
    assert forced.returncode == 0, forced.stderr
    agreement = json.loads(forced.stdout)["agreement"]["top1_agreement"]
    assert agreement < 1  # the digits model is barely trained: INT8 changes some of its close calls
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "refused" in refused.stderr and f"{agreement:.2%}" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


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
    assert (int8_labels == test.labels).float().mean().item() == pytest.approx(report["top1"], abs=1e-9)
    assert (int8_labels == fp32_labels).float().mean().item() == pytest.approx(report["top1_agreement"], abs=1e-9)

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
