"""Scores a user can trust: the calibration temperature fitted on the validation split and applied by every
way of running a checkpoint (vitkit.load, predict, serve, the ONNX and Hugging Face exports), and the
unknown-input rejection whose threshold comes from the validation split."""

import json
import shutil

import httpx
import numpy as np
import pytest
import torch
from conftest import run_vitkit
from PIL import Image
from serving import running_server

import vitkit
from vitkit.eval.calibration import (
    brier_score,
    calibration_measures,
    expected_calibration_error,
    fit_temperature,
)
from vitkit.eval.ood import auroc, fpr_at_tpr, keep_threshold
from vitkit.fileio import read_json, write_json
from vitkit.models import create_model
from vitkit.models.io import save_model

TEMPERATURE = 2.5  # far from 1, so that a path that forgets it gives visibly different scores
CLASSES = ["ant", "bee", "cat"]


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_at():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 10, generator=gen) * 4
    labels = torch.multinomial((logits / 3.0).softmax(1), 1, generator=gen).squeeze(1)
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.08)
    before, after = calibration_measures(logits, labels), calibration_measures(logits, labels, 3.0)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"]


def test_ece_and_brier_by_hand():
    # confidences 0.9 (right), 0.6 (wrong), 0.6 (right): bins (0.8667, 0.9333] and (0.5333, 0.6]
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx((0.1 + abs(0.6 + 0.6 - 1)) / 3)
    assert brier_score(probs, labels) == pytest.approx((0.02 + 0.72 + 0.32) / 3)
    # 15 bins, as scores.md says: 0.61 and 0.66 share (0.6, 0.667], 0.69 is alone in (0.667, 0.733]
    # (10 bins would pool all three, 20 would part 0.61 from 0.66)
    probs = torch.tensor([[0.61, 0.39], [0.66, 0.34], [0.69, 0.31]])
    labels = torch.tensor([0, 1, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx((abs(0.61 - 1 + 0.66) + abs(0.69 - 1)) / 3)


def test_auroc_and_fpr95_by_hand():
    inside, outside = torch.tensor([0.9, 0.8, 0.7, 0.2]), torch.tensor([0.75, 0.1])
    assert auroc(inside, outside) == pytest.approx(6 / 8)  # pairs where inside > outside
    assert keep_threshold(torch.arange(100.0), 0.95) == 5.0  # keeps 5..99: 95 of 100
    assert fpr_at_tpr(torch.arange(100.0), torch.tensor([4.0, 5.0, 50.0])) == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A small ViT that transformers can hold, saved with a calibration temperature, and a few images."""
    folder = tmp_path_factory.mktemp("calibrated")
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", image_size=32, patch_size=8, depth=2, num_classes=3).eval()
    with torch.no_grad():  # logits a few units apart, so that softmax(z) and softmax(z / T) differ clearly
        model.head.weight.mul_(40)
    pre = {"image_size": 32, "stored_size": 32, "channels": 3, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    calibration = {"method": "temperature", "temperature": TEMPERATURE, "fitted_on": "val", "fit_images": 1}
    ood = {"method": "energy", "thresholds": {"msp": 0.5, "energy": 1.0}, "keep": 0.95, "fitted_on": "val"}
    save_model(model, folder / "ckpt", class_names=CLASSES, preprocessing=pre, calibration=calibration, ood=ood)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        paths.append(folder / f"img{i}.png")
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(paths[-1])
    clf = vitkit.load(folder / "ckpt", device="cpu", backend="torch", precision="fp32")
    images = torch.stack([clf.preprocessing.load_tensor(p) for p in paths])
    with torch.no_grad():
        logits = model(clf.input_transform.for_inference(images))
    expected = (logits / TEMPERATURE).softmax(1)
    assert (expected - logits.softmax(1)).abs().max() > 0.05  # the temperature matters for these images
    return folder, paths, expected


def scores_by_label(result: dict) -> dict[str, float]:
    return {p["label"]: p["score"] for p in result["predictions"]}


def expected_scores(expected: torch.Tensor) -> list[dict[str, float]]:
    return [dict(zip(CLASSES, row)) for row in expected.tolist()]


def assert_same(results: list[dict], expected: torch.Tensor, tol: float = 1e-4) -> None:
    for got, want in zip(results, expected_scores(expected), strict=True):
        got = scores_by_label(got)
        assert got == pytest.approx({k: want[k] for k in got}, abs=tol)


def test_load_and_predict_divide_the_logits_by_the_temperature(calibrated):
    folder, paths, expected = calibrated
    for backend in ("torch", "onnxruntime"):
        clf = vitkit.load(folder / "ckpt", device="cpu", backend=backend, precision="fp32")
        # ONNX Runtime runs an export that divides in its graph, so the classifier does not again
        assert clf.temperature == TEMPERATURE and clf.logit_divisor == (TEMPERATURE if backend == "torch" else 1.0)
        assert_same(clf.predict(list(map(str, paths)), topk=3), expected)
    proc = run_vitkit(
        "predict", str(folder / "ckpt"), *map(str, paths), "--format", "json", "--topk", "3", "--precision", "fp32"
    )
    assert proc.returncode == 0, proc.stderr
    assert_same(json.loads(proc.stdout)["results"], expected)


def test_onnx_export_holds_the_temperature_in_its_graph(calibrated, tmp_path):
    import onnxruntime as ort

    folder, paths, expected = calibrated
    proc = run_vitkit("export", str(folder / "ckpt"), str(tmp_path / "model.onnx"))
    assert proc.returncode == 0, proc.stderr
    # any ONNX consumer gets calibrated logits: softmax of the graph's output
    clf = vitkit.load(folder / "ckpt", device="cpu", backend="torch", precision="fp32")
    images = torch.stack([clf.preprocessing.load_tensor(p) for p in paths])
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = clf.input_transform.for_inference(images).numpy()
    probs = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x})[0]).softmax(1)
    assert (probs - expected).abs().max() < 1e-4
    # and vitkit, loading the export, does not divide a second time
    exported = vitkit.load(tmp_path / "model.onnx")
    assert exported.temperature == TEMPERATURE and exported.logit_divisor == 1.0
    assert_same(exported.predict(list(map(str, paths)), topk=3), expected)


def test_hf_export_folds_the_temperature_into_the_classifier(calibrated, tmp_path):
    transformers = pytest.importorskip("transformers")
    folder, paths, expected = calibrated
    proc = run_vitkit("export", str(folder / "ckpt"), str(tmp_path / "hf"), "--format", "hf")
    assert proc.returncode == 0, proc.stderr
    pipe = transformers.pipeline("image-classification", model=str(tmp_path / "hf"), device="cpu")
    for path, want in zip(paths, expected_scores(expected)):
        got = {p["label"]: p["score"] for p in pipe(str(path), top_k=3)}
        assert got == pytest.approx(want, abs=1e-4)
    assert_same(vitkit.load(tmp_path / "hf", device="cpu", precision="fp32").predict(list(map(str, paths))), expected)
    # the export keeps the rejection thresholds, which its folded logits meet as the checkpoint's calibrated ones
    for method in ("msp", "energy"):
        answers = [
            vitkit.load(where, device="cpu", precision="fp32", reject_unknown=True, unknown_method=method).predict(
                list(map(str, paths))
            )
            for where in (folder / "ckpt", tmp_path / "hf")
        ]
        for ours, exported in zip(*answers, strict=True):
            assert exported["unknown"] == ours["unknown"]
            assert exported["unknown_score"] == pytest.approx(ours["unknown_score"], abs=1e-4)


def test_rejection_reads_the_image_and_its_mirror_where_the_checkpoint_says_so(calibrated, tmp_path):
    """A checkpoint whose thresholds were set on each image's mean with its mirror is scored the same way by
    both backends and by its ONNX export, while its class scores stay those of the image alone."""
    folder, paths, expected = calibrated
    shutil.copytree(folder / "ckpt", tmp_path / "ckpt")
    config = read_json(tmp_path / "ckpt" / "config.json")
    write_json(tmp_path / "ckpt" / "config.json", {**config, "ood": {**config["ood"], "mirror": True}})
    clf = vitkit.load(tmp_path / "ckpt", device="cpu", backend="torch", precision="fp32")
    x = clf.input_transform.for_inference(torch.stack([clf.preprocessing.load_tensor(p) for p in paths]))
    with torch.no_grad():
        logits, mirrored = clf.model(x), clf.model(x.flip(-1))
    both_views = ((logits + mirrored) / 2 / TEMPERATURE).logsumexp(1)
    assert (both_views - (logits / TEMPERATURE).logsumexp(1)).abs().min() > 1e-3  # the mirror matters here
    proc = run_vitkit("export", str(tmp_path / "ckpt"), str(tmp_path / "model.onnx"))
    assert proc.returncode == 0, proc.stderr
    ways = ((tmp_path / "ckpt", "torch"), (tmp_path / "ckpt", "onnxruntime"), (tmp_path / "model.onnx", "auto"))
    for where, backend in ways:
        clf = vitkit.load(
            where, device="cpu", backend=backend, precision="fp32", reject_unknown=True, unknown_method="energy"
        )
        results = clf.predict(list(map(str, paths)), topk=3)
        assert [r["unknown_score"] for r in results] == pytest.approx(both_views.tolist(), abs=1e-4), (where, backend)
        assert_same([{"predictions": r["predictions"] or r["nearest"]} for r in results], expected)


def test_serve_answers_with_calibrated_scores(calibrated, tmp_path):
    folder, paths, expected = calibrated
    with running_server(folder / "ckpt", "--precision", "fp32", log=tmp_path / "serve.log") as (base, _):
        files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
        answer = httpx.post(base + "/predict", files=files, timeout=60)
    assert answer.status_code == 200, answer.text
    assert_same(answer.json(), expected)


def test_run_calibration_and_rejection_come_from_the_validation_split(digits_run, tmp_path):
    """The training run records the temperature and thresholds fitted on val; `vitkit calibrate` fits the
    same on a copy of the run with them removed; the thresholds are the val split's quantiles, not test's."""
    from vitkit.eval.checkpoint import checkpoint_split

    out, results = digits_run
    report = results["calibration"]
    assert report["fitted_on"] == "val" and report["split"] == results["split"]
    assert set(report["before"]) == set(report["after"]) == {"ece", "nll", "brier"}
    assert (out / "reliability.png").is_file()
    meta = read_json(out / "best" / "config.json")
    assert meta["calibration"]["temperature"] == pytest.approx(report["temperature"])

    clf = vitkit.load(out, device="cpu", backend="torch", precision="fp32")
    ood = meta["ood"]
    assert ood["mirror"] is False  # digits are not trained mirrored: the scores read one view
    for split in ("val", "test"):
        _, _, _, part = checkpoint_split(clf, None, split, {})
        msp = clf.predict_tensor(part.images).max(1).values
        threshold = keep_threshold(msp, ood["keep"])
        if split == "val":
            assert ood["thresholds"]["msp"] == pytest.approx(threshold, abs=1e-5)
        else:
            assert ood["thresholds"]["msp"] != pytest.approx(threshold, abs=1e-5)

    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    config = read_json(copy / "best" / "config.json")
    write_json(copy / "best" / "config.json", {k: v for k, v in config.items() if k not in ("calibration", "ood")})
    (copy / "best" / "ood_features.safetensors").unlink()
    proc = run_vitkit("calibrate", str(copy), "--json")
    assert proc.returncode == 0, proc.stderr
    again = read_json(copy / "best" / "config.json")
    assert again["calibration"]["temperature"] == pytest.approx(report["temperature"], rel=1e-4)
    assert again["ood"]["thresholds"] == pytest.approx(ood["thresholds"], abs=1e-4)


def test_calibrate_sets_the_thresholds_of_a_run_trained_with_flips_on_mirrored_validation_images(digits_run, tmp_path):
    from vitkit.eval.checkpoint import checkpoint_split

    out, _ = digits_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    config = read_json(copy / "best" / "config.json")
    config = {k: v for k, v in config.items() if k not in ("calibration", "ood")}
    write_json(copy / "best" / "config.json", {**config, "train_config": {**config["train_config"], "hflip": True}})
    proc = run_vitkit("calibrate", str(copy), "--json")
    assert proc.returncode == 0, proc.stderr
    ood = read_json(copy / "best" / "config.json")["ood"]
    assert ood["mirror"] is True
    clf = vitkit.load(copy, device="cpu", backend="torch", precision="fp32")
    _, _, _, val = checkpoint_split(clf, None, "val", {})
    x = clf.input_transform.for_inference(val.images)
    with torch.no_grad():
        both_views = (clf.model(x) + clf.model(x.flip(-1))) / 2 / clf.temperature
    assert ood["thresholds"]["energy"] == pytest.approx(keep_threshold(both_views.logsumexp(1), ood["keep"]), abs=1e-5)


def test_reject_unknown_answers_unknown_below_the_threshold(digits_run, digit_images, tmp_path):
    out, _ = digits_run
    paths, _ = digit_images
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(noise)
    for method in ("msp", "energy", "knn"):
        clf = vitkit.load(out, device="cpu", precision="fp32", reject_unknown=True, unknown_method=method)
        # fp32 on a CPU takes ONNX Runtime, except for knn, which reads the features only PyTorch gives
        assert clf.backend == ("torch" if method == "knn" else "onnxruntime"), method
        threshold = clf.rejection.threshold
        for result in clf.predict([*map(str, paths), str(noise)]):
            assert result["unknown"] == (result["unknown_score"] < threshold)
            assert (result["predictions"] == []) == result["unknown"]
            assert result["unknown"] or "nearest" not in result
    proc = run_vitkit("predict", str(out), str(noise), "--reject-unknown", "--unknown-method", "msp")
    assert proc.returncode == 0, proc.stderr
    proc = run_vitkit(
        "predict", str(out), str(noise), "--reject-unknown", "--unknown-method", "knn", "--backend", "onnxruntime"
    )
    assert proc.returncode == 2 and "--unknown-method knn reads the model's features" in proc.stderr, proc.stderr


def test_reject_unknown_refuses_a_checkpoint_without_thresholds(calibrated, tmp_path):
    folder, paths, _ = calibrated
    config = read_json(folder / "ckpt" / "config.json")
    shutil.copytree(folder / "ckpt", tmp_path / "ckpt")
    write_json(tmp_path / "ckpt" / "config.json", {k: v for k, v in config.items() if k != "ood"})
    proc = run_vitkit("predict", str(tmp_path / "ckpt"), str(paths[0]), "--reject-unknown")
    assert proc.returncode != 0 and "vitkit calibrate" in proc.stderr


def test_serve_rejects_unknown_inputs_as_load_does(digits_run, digit_images, tmp_path):
    out, _ = digits_run
    paths, _ = digit_images
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(noise)
    images = [*paths[:3], noise]
    flags = ("--precision", "fp32", "--reject-unknown", "--unknown-method", "energy")
    expected = vitkit.load(out, device="cpu", precision="fp32", reject_unknown=True, unknown_method="energy").predict(
        list(map(str, images))
    )
    with running_server(out, *flags, log=tmp_path / "serve.log") as (base, _):
        files = [("file", (p.name, p.read_bytes(), "image/png")) for p in images]
        answer = httpx.post(base + "/predict", files=files, timeout=60).json()
        explained = httpx.post(base + "/explain", files=files[-1:], timeout=60).json()
    for got, want in zip(answer, expected, strict=True):
        assert got["unknown"] == want["unknown"]
        assert got["unknown_score"] == pytest.approx(want["unknown_score"], abs=1e-4)
    assert explained["unknown"] == expected[-1]["unknown"]
    assert explained["unknown_score"] == pytest.approx(expected[-1]["unknown_score"], abs=1e-4)
