"""vitkit check: file problems, exact and near duplicates and leaks, balance, label errors, the report
(rendered in headless Chromium), vitkit train's start-up check and --exclude."""

import csv
import io
import json
import os

import numpy as np
import pytest
from browser import artifacts_dir, headless_chromium
from conftest import run_vitkit, shared_dataset
from PIL import Image

from vitkit.check.duplicates import near_pairs, perceptual_hash, thumbnail_signature
from vitkit.check.files import inspect_file

COLOURS = {"cat": (200, 60, 50), "dog": (60, 180, 70), "fox": (50, 70, 200)}


def smooth_image(rng, colour, side=40) -> Image.Image:
    """A distinct picture: a random 4x4 pattern blown up smoothly, tinted by its class colour, so it
    survives resizing and re-encoding as a photo does while differing from every other one."""
    pattern = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
    image = Image.fromarray(pattern).resize((side, side), Image.Resampling.BICUBIC)
    tint = Image.new("RGB", (side, side), colour)
    return Image.blend(image, tint, 0.45)


def write_split_folder(root, per_class=(12, 4), seed=0):
    """root/{train,test}/{cat,dog,fox}/NNN.jpg of distinct smooth pictures."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test"), per_class):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                smooth_image(rng, colour).save(folder / f"{i:03d}.jpg", quality=92)
    return root


def plant_duplicates(root):
    """A test image copied into train exactly, another resized by 10% and re-encoded into train, a train
    picture copied to another class, and one copied within its class. Returns the (a, b) pairs by kind."""
    (root / "train" / "cat" / "leak-exact.jpg").write_bytes((root / "test" / "cat" / "000.jpg").read_bytes())
    image = Image.open(root / "test" / "dog" / "001.jpg")
    image.resize((44, 44), Image.Resampling.BICUBIC).save(root / "train" / "dog" / "leak-near.jpg", quality=70)
    (root / "train" / "fox" / "conflict.jpg").write_bytes((root / "train" / "cat" / "005.jpg").read_bytes())
    image = Image.open(root / "train" / "fox" / "007.jpg")
    image.resize((36, 36), Image.Resampling.BICUBIC).save(root / "train" / "fox" / "twin.jpg", quality=80)
    return {
        ("leak", True): {"test/cat/000.jpg", "train/cat/leak-exact.jpg"},
        ("leak", False): {"test/dog/001.jpg", "train/dog/leak-near.jpg"},
        ("conflict", True): {"train/cat/005.jpg", "train/fox/conflict.jpg"},
        ("duplicate", False): {"train/fox/007.jpg", "train/fox/twin.jpg"},
    }


def write_broken(folder):
    """One file of each problem `vitkit check` names; {file name: kind}."""
    rng = np.random.default_rng(1)
    photo = smooth_image(rng, (120, 120, 120))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    jpeg = buffer.getvalue()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image\n")
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    photo.save(folder / "png-named.jpg", "PNG")
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((np.asarray(photo.convert("L"), np.uint16) * 257).astype(np.uint16)).save(folder / "deep.png")
    palette = photo.convert("P")
    palette.save(folder / "palette.png", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(folder / "rotated.jpg", exif=exif)
    photo.resize((10, 12)).save(folder / "tiny.jpg")
    photo.resize((300, 40)).save(folder / "wide.jpg")
    photo.resize((600, 10)).save(folder / "strip.jpg")
    return {
        "empty.jpg": "empty",
        "text.jpg": "not-an-image",
        "truncated.jpg": "corrupt",
        "png-named.jpg": "wrong-extension",
        "cmyk.jpg": "cmyk",
        "deep.png": "16-bit",
        "palette.png": "transparency",
        "rotated.jpg": "exif-rotation",
        "tiny.jpg": "tiny",
        "wide.jpg": "wide",
        "strip.jpg": "extreme-aspect",
    }


def test_each_file_problem_is_named_with_what_training_does(tmp_path):
    expected = write_broken(tmp_path)
    for name, kind in expected.items():
        facts, _ = inspect_file(tmp_path / name, decode=True)
        assert kind in [k for k, _ in facts.problems], (name, facts.problems)
    clean, pixels = inspect_file(tmp_path / "rotated.jpg", decode=True, train_size=8)
    assert [k for k, _ in clean.problems] == ["exif-rotation"] and pixels.shape == (8, 8, 3)


def test_perceptual_hash_survives_resizing_and_reencoding_but_separates_pictures():
    rng = np.random.default_rng(3)
    pictures = [smooth_image(rng, (128, 128, 128), side=32) for _ in range(40)]
    copies = []
    for n, picture in enumerate(pictures[:20]):
        buffer = io.BytesIO()
        side = 29 if n % 2 else 35
        picture.resize((side, side), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=60 + n)
        copies.append(Image.open(buffer).convert("RGB"))
    everything = pictures + copies
    hashes = np.array([perceptual_hash(p) for p in everything], np.uint64)
    signatures = np.stack([thumbnail_signature(p) for p in everything])
    found = {(i, j) for i, j, _, _ in near_pairs(hashes, signatures)}
    assert found == {(n, 40 + n) for n in range(20)}


def test_images_under_16_pixels_are_compared_exactly_only(tmp_path):
    """Near copies (every pixel 3 brighter) are found at 32 px; at 8 px only exact copies are."""
    rng = np.random.default_rng(5)
    written = {}
    for side in (8, 32):
        picture = rng.integers(20, 230, (side, side, 3), dtype=np.uint8)
        for label, pixels in (("cat", picture), ("dog", picture + 3)):
            folder = tmp_path / "data" / label
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{side}px.png")
        written[side] = {f"cat/{side}px.png", f"dog/{side}px.png"}
    Image.fromarray(picture).save(tmp_path / "data" / "cat" / "32px-again.png")  # an exact copy counts at any size
    out = tmp_path / "report"
    proc = run_vitkit(
        "check", str(tmp_path / "data"), "--out", str(out), "--no-label-errors", "--data-dir", str(tmp_path / "c")
    )
    assert proc.returncode == 0, proc.stderr
    found = [
        (d["exact"], {i["path"] for i in d["images"]})
        for d in json.loads((out / "check.json").read_text())["duplicates"]
    ]
    near = [paths for exact, paths in found if not exact]  # the near copy pairs with one of the exact twins
    assert len(near) == 1 and "dog/32px.png" in near[0] and near[0] <= written[32] | {"cat/32px-again.png"}
    assert (True, {"cat/32px.png", "cat/32px-again.png"}) in found
    assert not any(paths & written[8] for _, paths in found)


@pytest.fixture
def checked(tmp_path):
    """A planted folder checked by the command line without label judging: (report, out, data, pairs)."""
    data = write_split_folder(tmp_path / "data")
    pairs = plant_duplicates(data)
    expected = write_broken(data / "train" / "cat")
    out = tmp_path / "report"
    proc = run_vitkit("check", str(data), "--out", str(out), "--no-label-errors", "--data-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    assert "leak(s) between splits" in proc.stdout and "check.html" in proc.stdout
    return json.loads((out / "check.json").read_text()), out, data, pairs, expected


def test_check_finds_files_duplicates_and_leaks(checked):
    report, out, data, pairs, expected = checked
    kinds = {(f["path"].rsplit("/", 1)[1], f["kind"]) for f in report["files"]}
    assert {(name, kind) for name, kind in expected.items()} <= kinds
    found = {(d["kind"], d["exact"]): {i["path"] for i in d["images"]} for d in report["duplicates"]}
    for key, pair in pairs.items():
        assert found.get(key) == pair, (key, found)
    # the broken ones may pair with their source picture (the CMYK copy is the same picture); nothing else
    planted = {frozenset(p) for p in pairs.values()}
    others = [d for d in report["duplicates"] if frozenset(i["path"] for i in d["images"]) not in planted]
    assert all(
        any("train/cat/" in i["path"] and i["path"].rsplit("/", 1)[1] in expected for i in d["images"]) for d in others
    )
    assert report["duplicates"][0]["kind"] == "leak"  # the worst first
    with open(out / "exclude.csv") as f:
        excluded = {row["path"]: row["reason"] for row in csv.DictReader(f)}
    broken = {"train/cat/empty.jpg", "train/cat/text.jpg", "train/cat/truncated.jpg", "train/cat/strip.jpg"}
    assert broken <= set(excluded)
    assert "train/cat/leak-exact.jpg" in excluded and "test/cat/000.jpg" not in excluded  # train's copy goes
    assert "train/dog/leak-near.jpg" in excluded
    assert (data / "train" / "cat" / "empty.jpg").stat().st_size == 0  # the data is never changed


def test_report_page_in_headless_chromium(checked):
    """Every thumbnail embedded and drawn, the sections present, no horizontal scroll at desktop and phone
    widths; screenshots go to test-artifacts/ to look at."""
    report, out, *_ = checked
    page = (out / "check.html").read_text()
    assert 'src="http' not in page and "<link" not in page  # self-contained
    driver = headless_chromium()
    from selenium.webdriver.common.by import By

    try:
        driver.get((out / "check.html").as_uri())
        assert driver.title.startswith("vitkit check")
        headings = [h.text for h in driver.find_elements(By.TAG_NAME, "h2")]
        assert [h.split()[0] for h in headings] == ["File", "Duplicates", "Balance", "Likely"]
        images = driver.find_elements(By.CSS_SELECTOR, ".pair img")
        assert len(images) >= 2 * 4
        assert driver.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)")
        for width in (1280, 420):
            driver.set_window_size(width, 1100)
            assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
            assert driver.save_screenshot(str(artifacts_dir() / f"check-report-{width}px.png"))
    finally:
        driver.quit()


def test_balance_names_classes_too_small_for_validation(tmp_path):
    data = write_split_folder(tmp_path / "data", per_class=(12, 0))
    for path in sorted((data / "train" / "fox").iterdir())[3:]:
        path.unlink()
    for split_dir in (data / "test",):
        import shutil

        shutil.rmtree(split_dir)
    out = tmp_path / "report"
    proc = run_vitkit("check", str(data), "--out", str(out), "--no-label-errors", "--data-dir", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "check.json").read_text())
    assert [r["label"] for r in report["balance"]["too_few_for_validation"]] == ["cat", "dog", "fox"]
    counts = {row["label"]: row["train"] for row in report["balance"]["counts"]}
    assert counts == {"cat": 12, "dog": 12, "fox": 3}


def test_cached_facts_count_only_while_the_file_keeps_its_size_and_modification_time(tmp_path):
    from vitkit.check.files import FactsCache, inspect_files

    image = tmp_path / "data" / "a.png"
    image.parent.mkdir()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(image)
    cache = FactsCache(image.parent, tmp_path / "cache")
    (facts,), _ = inspect_files([image], cache, decode=True)
    cache.save()
    again = FactsCache(image.parent, tmp_path / "cache")  # as a later run reads it
    assert again.get(str(image), need_decode=True) == facts
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: the same bytes, another time
    assert again.get(str(image), need_decode=True) is None
    image.write_bytes(b"not an image any more")
    (changed,), _ = inspect_files([image], again, decode=True)
    assert changed.problems and not facts.problems


def test_a_class_is_too_small_for_validation_under_five_images_and_not_at_five():
    from types import SimpleNamespace

    from vitkit.check.labels import balance

    given = [("val", 0)] * 5 + [("val", 1)] * 4 + [("train", 0)] * 20 + [("train", 1)] * 20
    entries = [SimpleNamespace(split=split, label=label) for split, label in given]
    report = balance(entries, ["cat", "dog"], multi_label=False, val_split=0.1, splits_given=True)
    assert [row["label"] for row in report["too_few_for_validation"]] == ["dog"]
    # held out of train at --val-split: 50 images at 0.1 leave 5, 40 leave 4
    entries = [SimpleNamespace(split="train", label=label) for label in [0] * 50 + [1] * 40]
    report = balance(entries, ["cat", "dog"], multi_label=False, val_split=0.1, splits_given=False)
    assert [(row["label"], row["val"]) for row in report["too_few_for_validation"]] == [("dog", 4)]


def test_multi_label_table_balance_and_co_occurrence(tmp_path):
    data = tmp_path / "posters"
    data.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        smooth_image(rng, (100, 100, 100)).save(data / f"p{i:02d}.jpg")
        genres = ["Drama"] + (["Comedy"] if i % 2 else []) + (["News"] if i < 3 else [])
        rows.append(f'p{i:02d},"{genres}"')
    (data / "train.csv").write_text("Id,Genre\n" + "\n".join(rows) + "\n")
    out = tmp_path / "report"
    proc = run_vitkit(
        "check", str(data), "--labels", str(data / "train.csv"), "--out", str(out), "--no-label-errors",
        "--data-dir", str(tmp_path / "c"), "--val-split", "0.2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "check.json").read_text())
    assert report["multi_label"]  # Comedy: 30 positives, 6 for validation; News: 3, under 1
    assert [r["label"] for r in report["balance"]["too_few_for_validation"]] == ["News"]
    top = report["balance"]["co_occurrence"][0]
    assert sorted(top["labels"]) == ["Comedy", "Drama"] and top["images"] == 30


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/missing"], "no such folder"),
        (["{tmp}/file.txt"], "is a file"),
        (["{tmp}/data", "--out", "{tmp}/data/report"], "inside the data folder"),
        (["{tmp}/data", "--labels", "{tmp}/labels.xlsx"], "not a table vitkit reads"),
        (["{tmp}/data", "--time-budget", "0"], "--time-budget"),
    ],
)
def test_check_refuses_bad_input_in_one_line(tmp_path, args, message):
    write_split_folder(tmp_path / "data", per_class=(2, 1))
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "labels.xlsx").write_text("x")
    proc = run_vitkit("check", *[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_label_errors_are_ranked_first(tmp_path):
    """Three colour classes, easy to learn, and 6 images moved to a wrong class: what confident learning flags
    are moved images (most of them), each with its true class suggested."""
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    flipped = set()
    names = list(COLOURS)
    for c, name in enumerate(names):
        for i in range(60):
            label = names[(c + 1) % 3] if i < 2 else name
            folder = data / label
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}-{i:02d}.jpg", quality=90)
            if label != name:
                flipped.add(f"{label}/{name}-{i:02d}.jpg")
    out = tmp_path / "report"
    proc = run_vitkit(
        "check", str(data), "--out", str(out), "--time-budget", "1.5", "--image-size", "16", "--seed", "0",
        "--data-dir", str(tmp_path / "c"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "check.json").read_text())
    assert "skipped" not in report["label_check"], report["label_check"]
    found = [e["path"] for e in report["label_errors"]]
    assert set(found) <= flipped and len(found) >= 4, (found, flipped)
    assert all(e["suggested"] == e["path"].split("/")[1].split("-")[0] for e in report["label_errors"])
    with open(out / "label_errors.csv") as f:
        assert [row["path"] for row in csv.DictReader(f)] == found


def test_flags_as_many_as_the_calibrated_confident_joint_counts_lowest_quality_first():
    """Out-of-fold predictions of a model sure of every answer and right on 80%: the flags are the
    lowest-quality images, at most as many as cleanlab counts on the temperature-scaled probabilities (raw
    over-confident ones count more: the model's own mistakes)."""
    from cleanlab.count import num_label_issues
    from cleanlab.rank import get_label_quality_scores

    from vitkit.check.labels import calibrated, likely_label_errors

    rng = np.random.default_rng(0)
    n, classes = 900, 3
    truth = rng.integers(0, classes, n)
    predicted = np.where(rng.random(n) < 0.8, truth, (truth + rng.integers(1, classes, n)) % classes)
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), predicted] += rng.uniform(3, 9, n)
    probabilities = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    given = np.where(rng.random(n) < 0.1, (truth + 1) % classes, truth)
    scaled = calibrated(probabilities, given)
    confidence = probabilities[np.arange(n), predicted].mean()
    assert confidence > 0.95 and scaled[np.arange(n), predicted].mean() < 0.75  # right only 4 times in 5
    flagged = [i for i, _ in likely_label_errors(given.tolist(), probabilities, False)]
    count = num_label_issues(given, scaled)
    assert 0.9 * count <= len(flagged) <= count < num_label_issues(given, probabilities)
    quality = get_label_quality_scores(given, scaled)
    flagged_set = set(flagged)
    assert flagged == [i for i in np.argsort(quality, kind="stable")[:count].tolist() if i in flagged_set]


def test_an_image_the_model_is_merely_unsure_about_is_not_flagged():
    """Confident learning's "both" rule: a label the model gives little probability is flagged only when
    another class is clearly preferred over it. The model's confident mistakes raise cleanlab's count above
    the flipped labels; the images whose probability is spread over all classes (their label a little below
    the rest) are then the least self-confident after the flipped ones, yet not label errors."""
    from vitkit.check.labels import likely_label_errors

    rng = np.random.default_rng(0)
    n, classes = 1000, 5
    truth = rng.integers(0, classes, n)
    kind = rng.choice(4, n, p=[0.8, 0.05, 0.05, 0.1])  # right, flipped label, the model's mistake, unsure
    other = (truth + rng.integers(1, classes, n)) % classes
    given = np.where(kind == 1, other, truth)
    logits = rng.normal(0, 0.3, (n, classes))
    logits[np.arange(n), truth] += np.where(kind == 3, -1.5, 6.0)
    logits[np.arange(n), other] += np.where(kind == 2, 8.0, 0.0)
    probabilities = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    flagged = [i for i, _ in likely_label_errors(given.tolist(), probabilities, False)]
    assert np.bincount(kind[flagged], minlength=4).tolist() == [0, (kind == 1).sum(), 0, 0]


@pytest.mark.slow
def test_train_reports_the_cheap_checks_and_takes_exclude(tmp_path):
    data = write_split_folder(tmp_path / "data", per_class=(8, 3))
    plant_duplicates(data)
    (data / "train" / "cat" / "empty.jpg").write_bytes(b"")
    exclude = tmp_path / "exclude.csv"
    exclude.write_text("path,reason\ntrain/cat/empty.jpg,empty\n")
    proc = run_vitkit(
        "train", "--data", str(data), "--model", "vit_micro_patch4_32", "--image-size", "16", "--epochs", "1",
        "--batch-size", "16", "--no-plots", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "c"),
        "--exclude", str(exclude),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stderr.splitlines() if line.startswith("check"))
    assert "2 exact duplicate file(s)" in line and "1 image(s) shared between splits" in line
    proc = run_vitkit(
        "train", "--data", str(data), "--model", "vit_micro_patch4_32", "--image-size", "16", "--epochs", "1",
        "--out", str(tmp_path / "run2"), "--data-dir", str(tmp_path / "c"),
    )  # fmt: skip
    assert proc.returncode == 2 and "empty.jpg" in proc.stderr  # without --exclude the empty file stops it


@pytest.mark.slow
def test_movie_posters_report_rare_labels_and_duplicates(tmp_path):
    posters = shared_dataset("movie-posters")
    out = tmp_path / "report"
    proc = run_vitkit(
        "check", str(posters), "--labels", str(posters / "train.csv"), "--out", str(out), "--no-label-errors",
        "--data-dir", str(tmp_path / "c"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "check.json").read_text())
    rare = {r["label"] for r in report["balance"]["too_few_for_validation"]}
    assert "News" in rare and "Drama" not in rare
    assert report["duplicates"], "the posters hold duplicates"


def test_exclude_leaves_table_rows_out_and_refuses_what_it_cannot_apply(tmp_path):
    from vitkit.data.prepare import read_exclude
    from vitkit.data.table import list_table

    data = write_split_folder(tmp_path / "data", per_class=(3, 0))
    rows = [f"train/{name}/{i:03d}.jpg,{name}" for name in COLOURS for i in range(3)]
    (tmp_path / "labels.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "exclude.txt").write_text("train/cat/000.jpg\n" + str(data / "train" / "dog" / "002.jpg") + "\n")
    exclude = read_exclude(tmp_path / "exclude.txt", str(data))
    listing = list_table(data, tmp_path / "labels.csv", exclude=exclude)
    kept = {p.relative_to(data).as_posix() for p, _ in listing.listed["train"]}
    assert len(kept) == 7 and "train/cat/000.jpg" not in kept and "train/dog/002.jpg" not in kept
    for n, (args, message) in enumerate(
        (
            (["--data", "digits", "--exclude", str(tmp_path / "exclude.txt")], "applies to an image folder"),
            (["--data", str(data), "--exclude", str(tmp_path / "none.csv")], "no such file"),
        )
    ):
        proc = run_vitkit("train", *args, "--out", str(tmp_path / f"run{n}"), "--epochs", "1")
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_vitkit_check_stays_the_function_beside_its_package():
    import vitkit
    import vitkit.check.report  # noqa: F401  (a submodule's import must not rebind vitkit.check)

    assert callable(vitkit.check) and vitkit.check.__module__ == "vitkit.api"


@pytest.mark.slow
def test_multi_label_label_errors_skip_labels_every_image_has(tmp_path):
    """Drama on every poster leaves nothing to judge (cleanlab refuses such a label); Comedy (red posters)
    and Action (green ones) are learnt, and the two blue posters labelled Comedy are flagged."""
    data = tmp_path / "posters"
    data.mkdir()
    rng = np.random.default_rng(0)
    rows, wrong = [], {"p01.jpg", "p04.jpg"}
    colours = [(220, 40, 40), (40, 40, 220), (40, 200, 40)]
    for i in range(90):
        smooth_image(rng, colours[i % 3]).save(data / f"p{i:02d}.jpg")
        comedy = i % 3 == 0 or f"p{i:02d}.jpg" in wrong
        genres = ["Drama"] + (["Comedy"] if comedy else []) + (["Action"] if i % 3 == 2 else [])
        rows.append(f'p{i:02d},"{genres}"')
    (data / "train.csv").write_text("Id,Genre\n" + "\n".join(rows) + "\n")
    out = tmp_path / "report"
    proc = run_vitkit(
        "check", str(data), "--labels", str(data / "train.csv"), "--out", str(out), "--time-budget", "0.8",
        "--image-size", "16", "--data-dir", str(tmp_path / "c"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "check.json").read_text())
    assert "out_of_fold_label_accuracy" in report["label_check"], report["label_check"]
    found = {e["path"] for e in report["label_errors"]}
    assert wrong <= found and len(found) <= 6, found
