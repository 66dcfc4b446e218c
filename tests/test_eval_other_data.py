"""Evaluation to take at its word: `vitkit eval RUN --data OTHER` and `top-losses --data OTHER` score every
image of other data (a folder, a label table), not a validation slice held out of it as if for training;
--split picks one of its own splits. A run folder works from any working directory and `--config args.yaml`
repeats it; top-5 is left out where it is 1 by definition, and a changed preset model is named so."""

from __future__ import annotations

import contextlib
import json
import os

import pytest
from conftest import run_vitkit, write_class_folders

import vitkit

CLASSES = ("cat", "dog", "fox")
TINY = ["--epochs", "1", "--threads", "1", "--batch-size", "8", "--image-size", "16", "--no-plots"]
TINY += ["--model", "vit_micro_patch4_32", "--model-arg", "depth=1", "--model-arg", "embed_dim=32"]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A tiny run trained on one folder (typed relative), and another folder of 37 images (not a multiple
    of anything held out)."""
    work = tmp_path_factory.mktemp("other-data")
    write_class_folders(work / "trained", CLASSES, per_class=8)
    other = write_class_folders(work / "other", CLASSES, per_class=(13, 12, 12), seed=1)
    with contextlib.chdir(work):  # the data as a user types it: relative to where the run was started
        result = run_vitkit("train", "--data", "trained/", "--out", "run", *TINY)
    assert result.returncode == 0, result.stderr
    return work / "run", other


def write_table(path, other, split: str | None = None) -> int:
    """A label table of every image under `other` (paths relative to it), all rows in `split` when given."""
    rows = [(f"{p.parent.name}/{p.name}", p.parent.name) for p in sorted(other.glob("*/*.jpg"))]
    header = "path,label" + (",split" if split else "")
    lines = [f"{p},{label}" + (f",{split}" if split else "") for p, label in rows]
    path.write_text("\n".join([header, *lines]) + "\n")
    return len(rows)


def test_eval_on_another_folder_scores_every_image(folder_run):
    run, other = folder_run
    report = vitkit.evaluate(run, data=str(other))
    assert report["count"] == 37 and report["split"] == "all" and not report["run_data"]
    assert report["source"] == f"every image of {other}"
    printed = run_vitkit("eval", str(run), "--data", str(other))
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert lines[0] == f"{other} [all] 37 images, fp32"
    assert lines[1] == f"  scored: every image of {other} (not the run's data)"
    # the run's own data still reports its held-out split
    own = vitkit.evaluate(run)
    assert own["run_data"] and own["split"] == "val" and own["count"] < 24


def test_eval_on_a_label_table_scores_every_row_and_its_own_splits(folder_run, tmp_path):
    run, other = folder_run
    table = tmp_path / "labels.csv"
    rows = write_table(table, other)
    assert vitkit.evaluate(run, data=str(other), labels=str(table))["count"] == rows == 37
    only_test = tmp_path / "test.csv"
    write_table(only_test, other, "test")
    for split in (None, "test"):
        report = vitkit.evaluate(run, data=str(other), labels=str(only_test), split=split)
        assert report["count"] == 37 and report["split"] == ("test" if split else "all")
    refused = run_vitkit("eval", str(run), "--data", str(other), "--labels", str(only_test), "--split", "val")
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith(f"{other} has no val split: pass --split all or test")


def test_top_losses_on_another_folder_ranks_every_image(folder_run, tmp_path):
    run, other = folder_run
    report = vitkit.top_losses(run, out=None, data=str(other))
    assert report["images"] == 37 and report["split"] == "all"
    printed = run_vitkit("top-losses", str(run), "--data", str(other), "--json", "--out", str(tmp_path / "t.png"))
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["images"] == 37


def test_a_run_folder_works_from_another_working_directory(folder_run, tmp_path, monkeypatch):
    """args.yaml records the data by absolute path, so the run is found from anywhere (here: its own folder)."""
    run, _ = folder_run
    monkeypatch.chdir(run)
    printed = run_vitkit("top-losses", ".", "--out", str(tmp_path / "t.png"), "--json")
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["split"] == "val"
    assert os.path.isabs(vitkit.load(".").meta["train_config"]["data"])


def test_config_args_yaml_repeats_a_run_into_a_new_folder(folder_run, tmp_path):
    """args.yaml records neither --out nor --resume, and an args.yaml of earlier versions that does is read
    without them: `--config args.yaml --out NEW` trains a new run, as docs/training.md says."""
    import yaml

    run, _ = folder_run
    recorded = yaml.safe_load((run / "args.yaml").read_text())
    assert "out" not in recorded and "resume" not in recorded
    earlier = tmp_path / "args.yaml"
    earlier.write_text(yaml.safe_dump({**recorded, "out": str(run), "resume": True}))
    repeated = run_vitkit("train", "--config", str(earlier), "--out", str(tmp_path / "again"), "--quiet")
    assert repeated.returncode == 0, repeated.stderr
    assert json.loads(repeated.stdout)["run_dir"] == str(tmp_path / "again")


def test_top5_is_nowhere_with_five_classes_or_fewer(folder_run):
    """Three classes: top-5 is 1 by definition, so no file or report carries it."""
    run, _ = folder_run
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train_top1" in header and not [column for column in header if "top5" in column]
    assert "top5" not in json.loads((run / "results.json").read_text())["metrics"]
    assert "top5" not in vitkit.evaluate(run)


def test_a_preset_whose_architecture_a_model_arg_changed_is_named_with_the_change(tmp_path):
    from vitkit.models.naming import model_label
    from vitkit.training.resolve import make_config

    photos = write_class_folders(tmp_path / "photos", per_class=3)
    assert model_label(**make_config(preset="folder-cct", data=str(photos)).to_dict()) == "folder-cct"
    changed = make_config(preset="folder-cct", data=str(photos), model_args={"stem": "patch", "pool": "cls"})
    assert model_label(**changed.to_dict()) == "folder-cct with stem=patch, pool=cls"
    # the size a --time-budget picks among the preset's own keeps the preset's name
    budget = make_config(preset="folder-cct", data=str(photos), time_budget=1.0)
    assert model_label(**budget.to_dict()) == "folder-cct"
