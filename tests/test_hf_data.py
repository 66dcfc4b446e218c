"""Hugging Face datasets as a data source: a save_to_disk folder and a parquet folder in the hub
layout, built here from the real flowers-mini photos, read and trained like the folder itself."""

import json

import datasets
import pytest
import torch
from conftest import run_vitkit, shared_dataset, subprocess_env

from vitkit.data.folder import load_folder, scan_folder
from vitkit.data.hf import load_hf
from vitkit.data.pack import pack_folder
from vitkit.data.prepare import DataOptions, prepare_data
from vitkit.data.preprocess import Preprocessing


def flowers_dataset_dict(root):
    """The folder as a DatasetDict: JPEG bytes kept, class names as a ClassLabel, same order."""
    splits = scan_folder(root)
    classes = sorted(splits["train"])
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    parts = {}
    for split, name in (("train", "train"), ("val", "validation")):
        rows = [(path, i) for i, c in enumerate(classes) for path in splits[split][c]]
        parts[name] = datasets.Dataset.from_dict(
            {"image": [{"bytes": p.read_bytes(), "path": p.name} for p, _ in rows], "label": [y for _, y in rows]},
            features=features,
        )
    return datasets.DatasetDict(parts)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    flowers = shared_dataset("flowers-mini")
    root = tmp_path_factory.mktemp("hf")
    table = flowers_dataset_dict(flowers)
    table.save_to_disk(str(root / "saved"))
    for split, part in table.items():
        part.to_parquet(str(root / "parquet" / "data" / f"{split}-00000-of-00001.parquet"))
    report = pack_folder(flowers, root / "packed")
    assert (report.images, report.shards, report.skipped) == (400, 2, [])
    return {"folder": flowers, "saved": root / "saved", "parquet": root / "parquet", "packed": root / "packed"}


@pytest.mark.parametrize("kind", ["saved", "parquet", "packed"])
@pytest.mark.parametrize("limit", [None, 0])
def test_hf_sources_hold_the_folder_images(sources, kind, limit):
    folder, _ = load_folder(sources["folder"], Preprocessing(24), cache=False)
    table = load_hf(str(sources[kind]), Preprocessing(24), memory_limit_gb=limit)
    assert table.class_names == folder.class_names and table.test is None
    assert table.train.in_memory == (limit is None)
    for split in ("train", "val"):
        mine, theirs = getattr(table, split), getattr(folder, split)
        assert torch.equal(mine.labels, theirs.labels)
        pick = torch.tensor([0, 7, len(mine) - 1])
        images = mine.images[pick] if mine.in_memory else torch.stack(mine.read_many(pick.tolist()))
        assert torch.equal(images, theirs.images[pick])


def test_columns_are_named_or_detected(sources):
    path = str(sources["parquet"])
    assert load_hf(path, Preprocessing(8), image_column="image", label_column="label").num_classes == 5
    with pytest.raises(ValueError, match="--label-column nope: .* has columns image, label"):
        load_hf(path, Preprocessing(8), label_column="nope")
    data, _ = prepare_data(DataOptions(path, train_limit=50), Preprocessing(8))
    assert len(data.train) == 50 and len(data.val) == 100


def test_pack_shrinks_large_images_into_shards(sources, tmp_path):
    out = tmp_path / "small"
    assert pack_folder(sources["folder"], out, size=48, shard_mb=0.5).shards == 3
    shards = sorted(p.name for p in (out / "data").iterdir())
    assert shards == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
        "validation-00000-of-00001.parquet",
    ]
    packed = datasets.load_dataset("parquet", data_dir=str(out / "data"), cache_dir=str(tmp_path / "cache"))
    folder, _ = load_folder(sources["folder"], Preprocessing(32), cache=False)
    assert packed["train"].features["label"].names == folder.class_names
    assert packed["train"]["label"][:] == folder.train.labels.tolist()
    assert all(min(image.size) == 48 and image.format == "JPEG" for image in packed["validation"]["image"])
    table = load_hf(str(out), Preprocessing(32))
    assert (table.val.images.float() - folder.val.images.float()).abs().mean() < 6  # resampled twice, not equal

    with pytest.raises(ValueError, match="is not empty: pack into a new folder"):
        pack_folder(sources["folder"], out)


# any model shows whether the sources hand over the same images in the same order: one block is enough
TRAIN = ["--image-size", "32", "--model-arg", "depth=1", "--epochs", "3", "--seed", "1"]
TRAIN += ["--threads", "1", "--no-progress", "--no-plots"]


@pytest.mark.slow
def test_saved_parquet_and_packed_datasets_train_to_the_folder_metrics(sources, tmp_path):
    packed = run_vitkit("data", "pack", str(sources["folder"]), str(tmp_path / "packed-cli"))
    assert packed.returncode == 0, packed.stderr[-3000:]
    assert "400 images in 2 shards" in packed.stdout
    sources = dict(sources, packed=tmp_path / "packed-cli")
    results = {}
    kinds = (("folder", []), ("saved", []), ("parquet", ["--memory-limit-gb", "0"]), ("packed", []))
    for kind, extra in kinds:
        out = tmp_path / kind
        proc = run_vitkit("train", "--data", str(sources[kind]), *TRAIN, *extra, "--out", str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[kind] = json.loads((out / "results.json").read_text())["metrics"]
    assert json.loads((tmp_path / "parquet" / "run.json").read_text())["data_streamed"]
    for kind in ("saved", "parquet", "packed"):
        assert results[kind]["class_names"] == results["folder"]["class_names"]
        assert results[kind]["count"] == results["folder"]["count"] == 100
        # the same images in the same order (README: the packed copy trains to the same metrics)
        assert results[kind]["confusion_matrix"] == results["folder"]["confusion_matrix"], kind
        assert abs(results[kind]["loss"] - results["folder"]["loss"]) < 1e-5, kind


@pytest.mark.slow  # a subprocess importing torch and datasets
def test_hub_dataset_offline_and_missing_fails_in_one_line(tmp_path):
    env = dict(subprocess_env(), HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    proc = run_vitkit("train", "--data", "hf:nobody/nothing", "--out", str(tmp_path / "run"), env=env)
    assert proc.returncode == 2
    assert "vitkit train: error: --data hf:nobody/nothing: cannot load the dataset (offline" in proc.stderr
    assert "Traceback" not in proc.stderr
