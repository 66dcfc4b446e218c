"""Test-time flip augmentation (`vitkit eval --flip-tta`, `evaluate(..., flip_tta=True)`): each image's
logits averaged with its mirror image's. Checked against the classifier's own probabilities on the
same images and their mirror images."""

import numpy as np
import torch

import vitkit
from vitkit.cli import main
from vitkit.data.builtin import load_digits_dataset


def test_flip_tta_averages_the_logits_of_each_image_and_its_mirror(digits_run, capsys):
    run, result = digits_run
    clf = vitkit.load(run, precision="fp32")  # evaluate() computes in fp32
    test = load_digits_dataset(seed=0).test
    # softmax of the mean log-probabilities is softmax of the mean logits: the log-sum-exp cancels
    # times the calibration temperature: the logits evaluate() averages, up to a constant per image
    log_probs = clf.predict_tensor(test.images).double().log() * clf.temperature
    mirrored_log_probs = clf.predict_tensor(test.images.flip(-1)).double().log() * clf.temperature
    expected = ((log_probs + mirrored_log_probs) / 2).softmax(dim=1)
    expected_losses = -expected[torch.arange(len(test)), test.labels].log()

    plain = vitkit.evaluate(run)
    tta = vitkit.evaluate(run, flip_tta=True)
    assert not plain["flip_tta"] and tta["flip_tta"] and tta["count"] == len(test)
    assert plain["top1"] == result["metrics"]["top1"]
    assert tta["top1"] == float((expected.argmax(1) == test.labels).double().mean())
    assert abs(tta["loss"] - float(expected_losses.mean())) < 1e-4
    # digits are not mirror-symmetric: averaging with the mirror image changes the predictions
    assert abs(tta["loss"] - plain["loss"]) > 1e-3
    confusion = np.asarray(tta["confusion_matrix"])
    assert confusion.sum() == len(test) and np.trace(confusion) == round(tta["top1"] * len(test))

    # top-losses ranks the calibrated probabilities, as vitkit predict gives them
    calibrated = ((log_probs + mirrored_log_probs) / 2 / clf.temperature).log_softmax(dim=1)
    report = vitkit.top_losses(run, count=3, out=None, flip_tta=True)
    for item in report["items"]:
        assert abs(item["loss"] + float(calibrated[item["index"], test.labels[item["index"]]])) < 1e-4

    assert main(["eval", str(run), "--flip-tta"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"digits [test, flip TTA] {len(test)} images, fp32"
    assert lines[1].split() == ["top1", f"{tta['top1']:.4f}"]
