"""`vitkit top-losses RUN`: the run's most confident mistakes on its reported split, listed and drawn.
Checked against the classifier's own probabilities on the same images."""

import numpy as np
import torch
from PIL import Image

import vitkit
from vitkit.cli import main
from vitkit.data.builtin import load_digits_dataset


def test_top_losses_are_the_highest_loss_mistakes_in_order(digits_run, tmp_path, capsys):
    run, result = digits_run
    report = vitkit.top_losses(run, count=6, out=tmp_path / "top.png")
    confusion = np.asarray(result["metrics"]["confusion_matrix"])
    assert report["split"] == result["split"] == "test" and report["images"] == confusion.sum()
    assert report["mistakes"] == confusion.sum() - np.trace(confusion) > 0

    # the classifier's own view of the same split: digits' test split with the run's seed
    clf = vitkit.load(run, precision="fp32")  # top-losses ranks in fp32, as vitkit eval reports
    test = load_digits_dataset(seed=0).test
    probs = clf.predict_tensor(test.images).double()
    losses = -probs[torch.arange(len(test)), test.labels].log()
    wrong = (probs.argmax(1) != test.labels).nonzero().flatten()
    expected = wrong[losses[wrong].argsort(descending=True)][: len(report["items"])].tolist()

    items = report["items"]
    assert [item["index"] for item in items] == expected and len(items) == min(6, report["mistakes"])
    assert [item["loss"] for item in items] == sorted((item["loss"] for item in items), reverse=True)
    for item in items:
        i = item["index"]
        assert item["predicted"] == clf.class_names[int(probs[i].argmax())] != item["true"]
        assert item["true"] == clf.class_names[int(test.labels[i])]
        assert abs(item["loss"] - float(losses[i])) < 1e-4 and abs(item["probability"] - float(probs[i].max())) < 1e-5

    image = Image.open(tmp_path / "top.png")
    assert image.format == "PNG" and np.asarray(image.convert("L"), dtype=float).std() > 10

    assert main(["top-losses", str(run), "--count", "2", "--out", str(tmp_path / "cli.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"digits [test]: {report['mistakes']} mistakes in {report['images']} images"
    assert lines[1].startswith(f"  1  loss {items[0]['loss']:.3f}  predicted {items[0]['predicted']}")
    assert len(lines) == 4 and (tmp_path / "cli.png").is_file()
