"""Multi-label classification and table-labelled data: table shapes and bad rows, the losses and metrics
against scikit-learn, threshold tuning, label mixing, and a tiny model trained on real posters through
predict, serve, ONNX and the Hugging Face pipeline."""

from __future__ import annotations

import codecs
import json
import re

import httpx
import numpy as np
import pytest
import torch
from conftest import run_vitkit, shared_dataset
from PIL import Image
from serving import running_server
from sklearn.metrics import average_precision_score, f1_score, log_loss

from vitkit.data.augment import mix_batch, soft_targets
from vitkit.data.preprocess import Preprocessing
from vitkit.data.table import BadRowError, load_table
from vitkit.eval.multilabel import (
    SHRINK_POSITIVES,
    average_precision,
    best_f1_threshold,
    f1_scores,
    multilabel_report,
    tune_thresholds,
)
from vitkit.training.losses import asymmetric_loss, binary_cross_entropy, positive_weights

# ----------------------------------------------------------------------------- tables


@pytest.fixture
def image_folder(tmp_path):
    """Real JPEGs of four colours under Images/, named by id."""
    folder = tmp_path / "photos"
    (folder / "Images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        pixels = np.clip(rng.normal(60 + 20 * i, 20, (12, 10, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "Images" / f"tt{i}.jpg")
    return folder


def load(folder, table, **options):
    return load_table(folder, table, Preprocessing(8), cache=False, **options)


def labels_by_row(dataset):
    """The train split's labels as sets of names, in table order."""
    names = dataset.class_names
    return [{names[k] for k in row.nonzero().flatten().tolist()} for row in dataset.train.labels]


def test_csv_with_a_python_list_column_and_ids_without_extension(image_folder, tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("Id,Genre\ntt0,\"['Drama', 'Romance']\"\ntt1,\"['Comedy']\"\ntt2,\"['Drama']\"\n")
    data, bad = load(image_folder, table)
    assert data.multi_label and bad == []
    assert data.class_names == ["Comedy", "Drama", "Romance"]
    assert labels_by_row(data) == [{"Drama", "Romance"}, {"Comedy"}, {"Drama"}]
    assert data.train.labels.dtype == torch.float32 and data.train.images.shape == (3, 3, 8, 8)


def test_zero_one_columns_are_the_labels_in_table_order(image_folder, tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("Id,Genre,Western,N/A,Action\ntt0,x,1,0,1\ntt1,y,0,1,0\ntt2,z,0,0,1\n")
    data, _ = load(image_folder, table)
    assert data.class_names == ["Western", "N/A", "Action"]
    assert labels_by_row(data) == [{"Western", "Action"}, {"N/A"}, {"Action"}]
    named, bad = load(image_folder, table, label_column="Action,Western", skip_bad=True)
    assert named.class_names == ["Action", "Western"]
    assert labels_by_row(named) == [{"Action", "Western"}, {"Action"}]
    assert len(bad) == 1 and "row 2 (Id 'tt1'): no label" in bad[0]


def test_tsv_single_label_with_relative_paths(image_folder, tmp_path):
    table = tmp_path / "labels.tsv"
    table.write_text("file\tclass\nImages/tt3.jpg\tdog\nImages/tt4.jpg\tcat\n./Images/tt5\tdog\n")
    data, _ = load(image_folder, table)
    assert not data.multi_label
    assert data.class_names == ["cat", "dog"]
    assert data.train.labels.tolist() == [1, 0, 1]


def test_jsonl_lists_parquet_separators_and_a_split_column(image_folder, tmp_path):
    jsonl = tmp_path / "labels.jsonl"
    rows = [{"image": "tt0.jpg", "tags": ["a", "b"]}, {"image": "tt1.jpg", "tags": ["b"]}]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data, _ = load(image_folder, jsonl)
    assert data.multi_label and labels_by_row(data) == [{"a", "b"}, {"b"}]

    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "labels.parquet"
    columns = {"path": ["tt0", "tt1", "tt2", "tt3"], "labels": ["a|c", "c", "b", "a"], "split": ["train"] * 3 + ["val"]}
    pq.write_table(pa.table(columns), parquet)
    data, _ = load(image_folder, parquet, label_separator="|")
    assert data.class_names == ["a", "b", "c"]
    assert labels_by_row(data) == [{"a", "c"}, {"c"}, {"b"}]
    assert len(data.val) == 1 and data.val.labels.tolist() == [[1.0, 0.0, 0.0]]


def test_bad_rows_stop_with_the_row_or_are_skipped_and_listed(image_folder, tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("Id,Genre\ntt0,\"['Drama']\"\nmissing7,\"['Drama']\"\ntt2,[]\ntt3,\"['Drama', x]\"\n")
    with pytest.raises(BadRowError, match=r"labels.csv row 2 \(Id 'missing7'\): no image under .*--skip-bad-images"):
        load(image_folder, table)
    data, bad = load(image_folder, table, skip_bad=True)
    assert len(data.train) == 1
    assert [re.search(r"row \d \(Id '\w+'\)", line).group() for line in bad] == [
        "row 2 (Id 'missing7')",
        "row 3 (Id 'tt2')",
        "row 4 (Id 'tt3')",
    ]
    assert "no label" in bad[1] and "not a valid" in bad[2]


def test_a_label_list_is_read_as_literals_never_run(image_folder, tmp_path):
    marker = tmp_path / "ran"
    table = tmp_path / "labels.csv"
    table.write_text(f"Id,Genre\ntt0,\"[__import__('pathlib').Path('{marker}').touch()]\"\ntt1,\"['a']\"\n")
    with pytest.raises(BadRowError, match="row 1 .*not a valid one"):
        load(image_folder, table)
    assert not marker.exists()


def test_utf16_and_bom_tables_are_read_and_other_encodings_are_named(image_folder, tmp_path):
    """Excel's "Unicode text" is UTF-16 with a byte-order mark, its "CSV UTF-8" has a UTF-8 one: both read.
    UTF-16 without its mark, or a legacy code page, is a one-line error saying how to save the file."""
    from vitkit.errors import VitkitError

    table = tmp_path / "labels.csv"
    content = "Id,Genre\ntt0,café\ntt1,dog\n"
    for encoding in ("utf-16", "utf-16-be", "utf-32", "utf-8-sig"):
        data = content.encode(encoding)
        table.write_bytes(data if encoding in ("utf-16", "utf-32", "utf-8-sig") else codecs.BOM_UTF16_BE + data)
        loaded, _ = load(image_folder, table)
        assert loaded.class_names == ["café", "dog"] and loaded.train.labels.tolist() == [0, 1], encoding
    save_as = "save it as UTF-8 (Excel: CSV UTF-8), or as UTF-16 with its byte-order mark"
    table.write_bytes(content.encode("utf-16-le"))
    with pytest.raises(VitkitError, match=re.escape(f"--labels {table}: holds NUL bytes, as UTF-16 without")):
        load(image_folder, table)
    table.write_bytes(content.encode("cp1252"))
    with pytest.raises(VitkitError) as refused:
        load(image_folder, table)
    assert str(refused.value) == f"--labels {table}: not UTF-8 text (line 2 has byte 0xe9); {save_as}"


def test_an_image_listed_twice_keeps_one_row_or_is_refused(image_folder, tmp_path):
    """A repeated row (the same labels and split) is a bad row, or with --skip-bad-images the image is
    used once; an image listed with different labels is refused naming both rows, or left out entirely."""
    table = tmp_path / "labels.csv"
    table.write_text("Id,Genre\ntt0,cat\ntt1,dog\ntt0.jpg,cat\n")
    with pytest.raises(BadRowError, match=r"labels.csv row 3 \(Id 'tt0.jpg'\): repeats row 1 \(the same image, labels"):
        load(image_folder, table)
    data, bad = load(image_folder, table, skip_bad=True)
    assert data.train.labels.tolist() == [0, 1] and len(bad) == 1 and "row 3" in bad[0]

    table.write_text("Id,Genre\ntt0,cat\ntt1,dog\nImages/tt0.jpg,dog\n")
    conflict = (
        "the image is listed more than once with different labels or splits (row 1: cat (train); row 3: dog (train))"
    )
    with pytest.raises(BadRowError, match=re.escape(f"labels.csv row 1 (Id 'tt0'): {conflict}. Fix the row")):
        load(image_folder, table)
    data, bad = load(image_folder, table, skip_bad=True)
    assert data.class_names == ["dog"] and len(data.train) == 1
    assert [re.search(r"row \d \(Id '[\w/.]+'\)", line).group() for line in bad] == [
        "row 1 (Id 'tt0')",
        "row 3 (Id 'Images/tt0.jpg')",
    ]


def test_a_label_a_spreadsheet_reads_as_a_formula_is_refused(image_folder, tmp_path):
    table = tmp_path / "labels.csv"
    for cell in ("=HYPERLINK(1)", "+cmd", "-2+3", "@SUM(A1)", "\"['a', '=1+1']\""):
        table.write_text(f"Id,Genre\ntt0,dog\ntt1,{cell}\n")
        label = "=1+1" if cell.startswith('"') else cell
        with pytest.raises(BadRowError) as refused:
            load(image_folder, table)
        assert str(refused.value).startswith(
            f"{table} row 2 (Id 'tt1'): label {label!r} is a spreadsheet formula, not a class name."
        ), cell
    table.write_text("Id,Genre\ntt0,-1\ntt1,+2\ntt2,0.5\n")  # numbers, not formulas
    assert load(image_folder, table)[0].class_names == ["-1", "+2", "0.5"]


def test_training_on_a_table_with_a_missing_image_is_one_line(image_folder, tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("Id,Genre\ntt0,\"['a']\"\nnope,\"['b']\"\n")
    result = run_vitkit("train", "--data", str(image_folder), "--labels", str(table), "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("vitkit train: error: ") and "row 2 (Id 'nope')" in lines[-1]
    assert "Traceback" not in result.stderr


def test_a_last_checkpoint_saved_before_the_first_validation_loads_at_untuned_thresholds(
    image_folder, tmp_path, monkeypatch
):
    """Ctrl-C right after the first mid-epoch last/ (--save-every): no thresholds are tuned yet. The
    checkpoint records 0.5 for every label as untuned, and loads saying so; so does one saved with none."""
    import vitkit
    from vitkit.training.engine import INTERRUPT_REQUESTED, Trainer

    table = tmp_path / "labels.csv"
    rows = [f"tt{i},\"{['a', 'b'] if i % 2 else ['b', 'c']}\"" for i in range(8)]
    table.write_text("Id,Genre\n" + "\n".join(rows) + "\n")
    save_last = Trainer.save_last

    def save_then_interrupt(self, epoch, next_batch):
        save_last(self, epoch, next_batch)
        INTERRUPT_REQUESTED.set()  # as Ctrl-C does: the next batch stops the run

    monkeypatch.setattr(Trainer, "save_last", save_then_interrupt)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        vitkit.train(
            data=str(image_folder), labels=str(table), out=str(out), model="vit_micro_patch4_32",
            model_args={"embed_dim": 32, "depth": 1, "num_heads": 2}, image_size=8, epochs=1, batch_size=2,
            save_every=1, threads=1, progress=False, plots=False, quiet=True,
        )  # fmt: skip
    INTERRUPT_REQUESTED.clear()
    meta = json.loads((out / "last" / "config.json").read_text())
    assert meta["thresholds"] == [0.5] * 3 and meta["thresholds_tuned"] is False
    untuned = (
        "was saved before its first validation, so its thresholds are not tuned yet: every label is predicted at 0.5"
    )
    heard = []
    classifier = vitkit.load(out / "last", backend="torch", notice=heard.append)
    assert classifier.thresholds == [0.5] * 3 and heard == [f"run {untuned}"]
    assert len(classifier.predict([str(image_folder / "Images" / "tt0.jpg")])) == 1
    # as vitkit saved it before it recorded the untuned thresholds
    meta.update(thresholds=None)
    del meta["thresholds_tuned"]
    (out / "last" / "config.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=untuned):
        assert vitkit.load(out / "last", backend="torch").thresholds == [0.5] * 3


def test_no_plots_leaves_the_figures_out_and_keeps_every_number(image_folder, tmp_path):
    table = tmp_path / "labels.csv"
    rows = [f'tt{i},"{["a", "b"] if i % 2 else ["a"]}"' for i in range(8)]
    table.write_text("Id,Genre\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run"
    tiny = ("--model-arg", "depth=1", "--model-arg", "embed_dim=16", "--model-arg", "num_heads=1")
    result = run_vitkit(
        "train", "--data", str(image_folder), "--labels", str(table), "--image-size", "8", *tiny, "--epochs", "1",
        "--batch-size", "4", "--val-split", "0.25", "--no-plots", "--out", str(out), "--threads", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not list(out.glob("*.png"))
    for name in ("results.json", "metrics.csv", "per_label.csv", "best/model.safetensors", "last/trainer.pt"):
        assert (out / name).stat().st_size > 0, name
    per_label = (out / "per_label.csv").read_text().splitlines()
    assert per_label[0].startswith("label,ap,threshold") and {r.split(",")[0] for r in per_label[1:]} == {"a", "b"}


# ----------------------------------------------------------------------------- losses and metrics


def random_multilabel(n=64, k=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=gen, dtype=torch.float64) * 2
    targets = (torch.rand(n, k, generator=gen, dtype=torch.float64) < torch.linspace(0.1, 0.6, k)).double()
    return logits, targets


def test_bce_is_the_sum_of_each_labels_log_loss():
    logits, targets = random_multilabel()
    p = logits.sigmoid().numpy()
    expected = sum(log_loss(targets[:, k].numpy(), p[:, k], labels=[0, 1]) for k in range(targets.shape[1]))
    assert binary_cross_entropy(logits, targets).item() == pytest.approx(expected, rel=1e-9)


def test_asymmetric_loss_follows_the_paper_and_reduces_to_bce():
    logits, targets = random_multilabel()
    assert asymmetric_loss(logits, targets, 0.0, 0.0, 0.0).item() == pytest.approx(
        binary_cross_entropy(logits, targets).item(), rel=1e-9
    )
    p = logits.sigmoid().numpy()
    y = targets.numpy()
    p_m = np.maximum(p - 0.05, 0)
    per = y * (1 - p) ** 1 * np.log(p) + (1 - y) * p_m**4 * np.log(1 - p_m)
    assert asymmetric_loss(logits, targets, 4.0, 1.0, 0.05).item() == pytest.approx(-per.sum(1).mean(), rel=1e-9)


def test_positive_weights_balance_each_labels_positives_against_its_negatives():
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.float32)
    assert positive_weights(labels).tolist() == [pytest.approx(1 / 3), 3.0, 1.0]
    logits, targets = random_multilabel(k=3)
    weights = positive_weights(targets)
    p = logits.sigmoid()
    manual = -(weights * targets * p.log() + (1 - targets) * (1 - p).log()).sum(1).mean()
    assert binary_cross_entropy(logits, targets, weights).item() == pytest.approx(manual.item(), rel=1e-6)


def test_average_precision_and_f1_match_scikit_learn():
    logits, targets = random_multilabel(n=200, k=6, seed=3)
    scores = (logits.sigmoid() * 20).round() / 20  # ties, which average precision must take together
    y, s = targets.numpy(), scores.numpy()
    for k in range(6):
        assert average_precision(scores[:, k], targets[:, k]) == pytest.approx(
            average_precision_score(y[:, k], s[:, k])
        )
    report = multilabel_report(scores, targets)
    assert report["map_macro"] == pytest.approx(average_precision_score(y, s, average="macro"))
    assert report["map_micro"] == pytest.approx(average_precision_score(y, s, average="micro"))
    thresholds = torch.tensor([0.33, 0.41, 0.47, 0.52, 0.61, 0.68], dtype=torch.float64)  # between score steps
    predicted = (s >= thresholds.numpy()).astype(int)
    f1 = f1_scores(scores, targets, thresholds)
    assert f1["f1_macro"] == pytest.approx(f1_score(y, predicted, average="macro", zero_division=0))
    assert f1["f1_micro"] == pytest.approx(f1_score(y, predicted, average="micro", zero_division=0))
    per_label = f1_score(y, predicted, average=None, zero_division=0)
    assert [
        report_row["f1"] for report_row in multilabel_report(scores, targets, None, thresholds)["per_label"].values()
    ] == pytest.approx(per_label)


def test_a_label_without_positives_is_left_out_of_macro_map():
    scores = torch.tensor([[0.9, 0.2], [0.1, 0.8], [0.7, 0.3]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    report = multilabel_report(scores, targets, ["a", "b"])
    assert report["labels_without_positives"] == ["b"] and report["per_label"]["b"]["ap"] is None
    assert report["map_macro"] == pytest.approx(average_precision_score([1, 0, 1], [0.9, 0.1, 0.7]))


def test_unshrunk_thresholds_give_each_label_its_best_f1():
    logits, targets = random_multilabel(n=120, k=4, seed=5)
    scores = logits.sigmoid().float()
    thresholds = tune_thresholds(scores, targets, shrink=0)
    for k in range(4):
        y, s = targets[:, k].numpy(), scores[:, k].numpy()
        best = max(f1_score(y, s >= t, zero_division=0) for t in np.unique(s))
        assert f1_score(y, s >= thresholds[k].item(), zero_division=0) == pytest.approx(best)
        assert not np.any(np.isclose(s, thresholds[k].item()))  # halfway between scores, never on one
    assert tune_thresholds(scores, torch.zeros_like(targets)).tolist() == [0.5] * 4


def test_a_label_with_few_validation_positives_keeps_little_of_its_own_threshold():
    """A label with one positive would get the threshold that fits that one image (here 0.15, below most
    negatives); shrunk toward the pooled best-F1 threshold, by its positives against SHRINK_POSITIVES."""
    gen = torch.Generator().manual_seed(0)
    common = (torch.rand(200, generator=gen) < 0.5).double()
    noise = torch.rand(200, 2, generator=gen)
    scores = torch.stack([0.3 + 0.4 * common + 0.1 * noise[:, 0], 0.3 * noise[:, 1]], 1)
    rare = torch.zeros(200, dtype=torch.float64)
    rare[int(scores[:, 1].argmin())] = 1  # its one positive scores lowest: only a threshold below all fits it
    targets = torch.stack([common, rare], 1)
    pooled = tune_thresholds(scores, targets, shrink=float("inf"))
    assert pooled[0] == pooled[1] == pytest.approx(best_f1_threshold(scores.flatten(), targets.flatten()))
    own = tune_thresholds(scores, targets, shrink=0)
    assert own[1] < scores[:, 1].min() + 1e-6  # every image predicted with the rare label
    shrunk = tune_thresholds(scores, targets)
    assert abs(shrunk[1] - pooled[1]) < abs(shrunk[1] - own[1]) / 10  # one positive: mostly the pooled threshold
    weight = 1 / (1 + SHRINK_POSITIVES)
    assert shrunk[1].item() == pytest.approx(weight * own[1].item() + (1 - weight) * pooled[1].item(), rel=1e-5)
    positives = common.sum().item()
    assert shrunk[0].item() == pytest.approx(
        (positives * own[0].item() + SHRINK_POSITIVES * pooled[0].item()) / (positives + SHRINK_POSITIVES), rel=1e-5
    )
    report = multilabel_report(scores, targets, None, shrunk, loss_sum=float(scores.numel()))
    assert report["mean_true_labels"] == pytest.approx(float(targets.sum(1).mean()))
    assert report["mean_predicted_labels"] == pytest.approx(float((scores >= shrunk).sum(1).double().mean()))
    assert report["mean_predicted_labels@0.5"] == pytest.approx(float((scores >= 0.5).sum(1).double().mean()))
    assert report["loss"] == 1.0  # the summed loss is reported as a mean per (image, label)


def test_mixup_and_cutmix_mix_label_sets_by_pixels():
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    assert soft_targets(labels, 3, 0.2).tolist()[0] == pytest.approx([0.9, 0.1, 0.9])
    x = torch.stack([torch.full((3, 16, 16), float(i)) for i in range(4)])
    for mixup, cutmix in ((0.0, 1.0), (1.0, 0.0)):
        gen = torch.Generator().manual_seed(2)
        mixed, targets = mix_batch(x, labels, 3, mixup, cutmix, 0.0, gen)
        # each image's share of its own pixels: 1 where untouched, lam where mixed or pasted over
        own = 1 - (mixed[0] - x[0]).abs().mean() / (x[3] - x[0]).abs().mean()
        assert targets[0].tolist() == pytest.approx((own * labels[0] + (1 - own) * labels[3]).tolist(), abs=1e-5)
        assert targets.max() <= 1 and 0.0 < own < 1.0


# ----------------------------------------------------------------------------- a trained model
# The tests below share one trained model: one xdist worker runs them all, so it is trained once
# (per session: other modules' tests run between them).


@pytest.fixture(scope="session")
def poster_run(tmp_path_factory):
    """A tiny ViT that transformers can hold, trained briefly on 96 real posters (16 px)."""
    posters = shared_dataset("movie-posters")
    work = tmp_path_factory.mktemp("posters")
    lines = (posters / "train.csv").read_text().splitlines()
    (work / "posters.csv").write_text("\n".join(lines[:97]) + "\n")
    out = work / "run"
    result = run_vitkit(
        "train", "--data", str(posters), "--labels", str(work / "posters.csv"), "--model", "vit_micro_patch4_32",
        "--model-arg", "embed_dim=32", "--model-arg", "depth=1", "--model-arg", "num_heads=2",
        "--model-arg", "class_token=true", "--model-arg", "pool=cls",
        "--image-size", "16", "--epochs", "2", "--batch-size", "16", "--val-split", "0.3", "--mixup", "0.2",
        "--multilabel-loss", "asymmetric", "--class-weights", "balanced", "--out", str(out), "--threads", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    images = sorted((posters / "Images").glob("tt00*.jpg"))[:12]
    return out, images, json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.xdist_group("posters")
def test_a_multilabel_run_records_map_thresholds_and_figures(poster_run):
    out, _, printed = poster_run
    results = json.loads((out / "results.json").read_text())
    meta = json.loads((out / "best" / "config.json").read_text())
    assert meta["multi_label"] is True and len(meta["thresholds"]) == len(meta["class_names"]) == 25
    assert results["metrics"]["thresholds"] == meta["thresholds"] and results["monitor"] == "val_map"
    assert (
        printed[f"{results['split']}_map_macro"] == results["metrics"]["map_macro"]
        and 0 < results["metrics"]["map_micro"] <= 1
    )
    assert {"val_map", "val_map_micro"} <= set((out / "metrics.csv").read_text().splitlines()[0].split(","))
    for figure in ("label_ap.png", "precision_recall.png", "curves.png", "predictions.png", "per_label.csv"):
        assert (out / figure).stat().st_size > 0
    evaluated = run_vitkit("eval", str(out), "--json")
    assert json.loads(evaluated.stdout)["map_macro"] == pytest.approx(results["metrics"]["map_macro"])
    # the stored thresholds are the best checkpoint's, tuned on the validation split
    import vitkit
    from vitkit.data.loader import BatchLoader
    from vitkit.eval.checkpoint import checkpoint_split
    from vitkit.eval.multilabel import multilabel_outputs

    classifier = vitkit.load(out, backend="torch", precision="fp32")
    _, _, _, val = checkpoint_split(classifier, None, "val", {})
    scores, targets, _ = multilabel_outputs(
        classifier.model, BatchLoader(val, 64, shuffle=False), classifier.input_transform
    )
    assert tune_thresholds(scores, targets).tolist() == pytest.approx(meta["thresholds"], abs=1e-5)


@pytest.mark.slow
@pytest.mark.xdist_group("posters")
def test_predict_returns_every_label_above_its_threshold(poster_run):
    import vitkit

    out, images, _ = poster_run
    classifier = vitkit.load(out, backend="torch", precision="fp32")
    scores = classifier.predict_tensor(torch.stack([classifier.preprocessing.load_tensor(p) for p in images]))
    thresholds = torch.tensor(classifier.thresholds)
    results = classifier.predict([str(p) for p in images])
    for row, result in zip(scores, results):
        expected = {classifier.class_names[k] for k in (row >= thresholds).nonzero().flatten().tolist()}
        assert {p["label"] for p in result["predictions"]} == expected
        assert all(p["score"] == pytest.approx(row[classifier.class_names.index(p["label"])].item(), abs=1e-6)
                   for p in result["predictions"])  # fmt: skip
    printed = run_vitkit(
        "predict", str(out), *map(str, images), "--format", "json", "--backend", "torch", "--precision", "fp32"
    )
    assert [r["predictions"] for r in json.loads(printed.stdout)["results"]] == [r["predictions"] for r in results]
    # one threshold for every label instead of the tuned ones, from Python and the command line
    lower = classifier.predict([str(p) for p in images], threshold=0.3)
    for row, result in zip(scores, lower):
        assert {p["label"] for p in result["predictions"]} == {
            classifier.class_names[k] for k in (row >= 0.3).nonzero().flatten().tolist()
        }
    printed = run_vitkit("predict", str(out), *map(str, images), "--format", "json", "--threshold", "0.3",
                         "--backend", "torch", "--precision", "fp32")  # fmt: skip
    assert [r["predictions"] for r in json.loads(printed.stdout)["results"]] == [r["predictions"] for r in lower]
    refused = run_vitkit("predict", str(out), str(images[0]), "--threshold", "1.5")
    assert refused.returncode == 2 and "use a score between 0 and 1" in refused.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("posters")
def test_onnx_and_hf_exports_carry_the_thresholds_and_agree(poster_run, tmp_path):
    import onnx
    from transformers import pipeline

    import vitkit

    out, images, _ = poster_run
    classifier = vitkit.load(out, backend="torch", precision="fp32")
    expected = classifier.predict([str(p) for p in images])
    assert run_vitkit("export", str(out), str(tmp_path / "m.onnx")).returncode == 0
    metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(metadata["thresholds"]) == dict(zip(classifier.class_names, classifier.thresholds))
    from_onnx = vitkit.load(tmp_path / "m.onnx").predict([str(p) for p in images])
    for mine, theirs in zip(expected, from_onnx):
        assert [p["label"] for p in theirs["predictions"]] == [p["label"] for p in mine["predictions"]]

    assert run_vitkit("export", str(out), str(tmp_path / "hf"), "--format", "hf").returncode == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["problem_type"] == "multi_label_classification"
    hf = pipeline("image-classification", model=str(tmp_path / "hf"), device="cpu")
    thresholds = dict(zip(classifier.class_names, classifier.thresholds))
    for mine, theirs in zip(expected, hf([Image.open(p) for p in images], top_k=25)):
        scores = {p["label"]: p["score"] for p in theirs}
        assert {n for n, s in scores.items() if s >= thresholds[n]} == {p["label"] for p in mine["predictions"]}
        assert all(abs(p["score"] - scores[p["label"]]) < 1e-3 for p in mine["predictions"])
    reloaded = vitkit.load(tmp_path / "hf", backend="torch", precision="fp32")
    assert reloaded.multi_label and reloaded.thresholds == pytest.approx(classifier.thresholds)


@pytest.mark.slow
@pytest.mark.xdist_group("posters")
def test_the_server_answers_with_label_sets(poster_run, tmp_path):
    out, images, _ = poster_run
    import vitkit

    expected = vitkit.load(out, backend="torch", precision="fp32").predict(str(images[0]))["predictions"]
    with running_server(out, "--backend", "torch", "--precision", "fp32", log=tmp_path / "serve.log") as (base, _):
        with open(images[0], "rb") as f:
            answer = httpx.post(base + "/predict", files={"file": ("p.jpg", f, "image/jpeg")}, timeout=60).json()
        assert [p["label"] for p in answer[0]["predictions"]] == [p["label"] for p in expected]
        assert httpx.get(base + "/labels").json()["multi_label"] is True
        assert "every label above its threshold" in httpx.get(base + "/").text
        with open(images[0], "rb") as f:
            shown = httpx.post(base + "/explain", files={"file": ("p.jpg", f, "image/jpeg")}, timeout=60).json()
        assert shown["multi_label"] is True
        assert [p["label"] for p in shown["predictions"]] == [p["label"] for p in expected]
