"""One preprocessing contract: vitkit, its ONNX export and its Hugging Face export see the same pixels.

Real photos (flowers-mini/val, non-square), real short training runs, real transformers processors and
pipelines, real ONNX Runtime sessions.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from conftest import run_vitkit, shared_dataset, subprocess_env
from PIL import Image

import vitkit
from vitkit.cli import main as vitkit_main
from vitkit.data.images import BadImageError, open_image
from vitkit.data.preprocess import Preprocessing
from vitkit.inference.predict import expand_paths, predict_paths
from vitkit.models import create_model, save_model

TINY_VIT = dict(model="vit_tiny_patch16_224", image_size=32, model_args={"patch_size": 8, "depth": 2})
QUICK = dict(epochs=1, train_limit=40, batch_size=16, progress=False, plots=False, threads=2)


def export(checkpoint, out, *options) -> None:
    assert vitkit_main(["export", str(checkpoint), str(out), *options]) == 0


def val_photos():
    return expand_paths([str(shared_dataset("flowers-mini") / "val")])


def processor_for(pre: Preprocessing, tmp_path):
    from vitkit.pretrained.hf import image_processor_config

    (tmp_path / "proc").mkdir(exist_ok=True)
    (tmp_path / "proc" / "preprocessor_config.json").write_text(
        json.dumps({**image_processor_config(pre), "do_rescale": False, "do_normalize": False})
    )
    return transformers.AutoImageProcessor.from_pretrained(tmp_path / "proc")


def test_shortest_edge_resize_truncates_the_long_side_as_transformers_does():
    from transformers.image_transforms import get_resize_output_image_size

    pre = Preprocessing(64)
    assert pre.resized_shape(500, 335) == (95, 64)  # 500 * 64 / 335 = 95.5: truncated, not rounded
    assert pre.resized_shape(335, 500) == (64, 95)
    assert Preprocessing(224, crop_pct=0.875).resize_size == 256
    assert Preprocessing(224, crop_pct=224 / 248).resize_size == 248
    assert Preprocessing(224, crop_pct=0.9).resize_size == math.floor(224 / 0.9)
    for w, h in [(500, 335), (160, 107), (97, 160), (333, 1000), (64, 64)]:
        for pre in (Preprocessing(64), Preprocessing(32, crop_pct=0.875)):
            image = np.zeros((h, w, 3), np.uint8)
            theirs = get_resize_output_image_size(image, pre.resize_size, default_to_square=False)
            assert pre.resized_shape(w, h) == theirs[::-1], (w, h)


@pytest.mark.parametrize(
    "pre",
    [
        Preprocessing(32),
        Preprocessing(32, crop_pct=0.875, resample="bilinear"),
        Preprocessing(32, mode="stretch", resample="bilinear"),
        Preprocessing(48, mode="stretch", crop_pct=0.9),
    ],
    ids=["crop", "crop-pct-bilinear", "stretch", "stretch-crop-pct"],
)
def test_decoded_pixels_equal_the_exported_processor_on_every_photo(pre, tmp_path):
    """Bit-exact: the processor vitkit writes computes vitkit's pixels on every real photo."""
    processor = processor_for(pre, tmp_path)
    for path in val_photos():
        ours = pre.load_array(path).transpose(2, 0, 1).astype(np.float32)
        theirs = processor(Image.open(path), return_tensors="np")["pixel_values"][0]
        assert theirs.shape == ours.shape and np.array_equal(ours, theirs), path


def test_old_run_folders_read_as_todays_crop_pipeline(tmp_path):
    old = {
        "image_size": 32,
        "stored_size": 16,
        "channels": 3,
        "mean": [0.4, 0.5, 0.6],
        "std": [0.2, 0.2, 0.3],
        "resize": "shorter side, centre crop",
        "resample": "bicubic, then bilinear",
    }
    pre = Preprocessing.from_dict(old)
    assert (pre.mode, pre.crop_pct, pre.resample, pre.decode_size) == ("crop", 1.0, "bicubic", 16)
    assert pre.image_size == 32 and pre.mean == (0.4, 0.5, 0.6) and pre.std == (0.2, 0.2, 0.3)
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    model = create_model("vit_micro_patch4_32", num_classes=2)
    save_model(model, tmp_path / "old", class_names=["a", "b"], preprocessing=old)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(photo)
    clf = vitkit.load(tmp_path / "old", device="cpu", backend="torch")
    assert clf.preprocessing == pre and clf.preprocessing.load_tensor(photo).shape == (3, 16, 16)
    assert predict_paths(clf, [photo], progress=False)[0]["predictions"][0]["label"] in ("a", "b")
    from conftest import ROOT  # a run folder written by vitkit 0.1

    v01 = vitkit.load(ROOT / "tests" / "fixtures" / "run-v0.1", device="cpu", backend="torch").preprocessing
    assert (v01.mode, v01.resample, v01.image_size, v01.decode_size, v01.channels) == ("crop", "bicubic", 16, 8, 1)


def test_the_folder_cache_is_keyed_by_the_preprocessing(tmp_path):
    from conftest import write_class_folders

    from vitkit.data.folder import load_folder

    root = write_class_folders(tmp_path / "data", per_class=3, size=20)  # 24x20 photos
    crop, _ = load_folder(root, Preprocessing(16))
    stretch, _ = load_folder(root, Preprocessing(16, mode="stretch"))
    assert not torch.equal(crop.train.images, stretch.train.images)
    first = root / "cat" / "000.jpg"
    expected = Preprocessing(16, mode="stretch").load_tensor(first)
    assert torch.equal(stretch.train.images[0], expected)


def test_checkpoints_bring_their_own_preprocessing(tmp_path):
    """Hugging Face processors and timm's pretrained_cfg are read, not replaced by vitkit's default."""
    from safetensors.torch import save_file

    from vitkit.pretrained import load_pretrained

    hf = tiny_hf_folder(tmp_path / "deit")
    deit = {
        "image_processor_type": "DeiTImageProcessor",
        "size": {"height": 36, "width": 36},
        "do_center_crop": True,
        "crop_size": {"height": 32, "width": 32},
        "resample": 3,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }
    (hf / "preprocessor_config.json").write_text(json.dumps(deit))
    pre = load_pretrained(hf).preprocessing
    assert (pre.image_size, pre.mode, pre.resize_size, pre.resample) == (32, "stretch", 36, "bicubic")
    assert pre.mean == (0.485, 0.456, 0.406)

    timm_dir = tmp_path / "timm"
    timm_dir.mkdir()
    model = create_model("vit_tiny_patch16_224", image_size=32, patch_size=8, depth=1, num_classes=4)
    state = model.state_dict()  # vitkit names its layers as timm does
    save_file(state, str(timm_dir / "model.safetensors"))
    pretrained_cfg = {
        "input_size": [3, 32, 32],
        "crop_pct": 0.9,
        "interpolation": "bilinear",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }
    config = {"architecture": "vit_tiny_patch16_224", "pretrained_cfg": pretrained_cfg}
    (timm_dir / "config.json").write_text(json.dumps(config))
    loaded = load_pretrained(timm_dir)
    assert loaded.has_head and loaded.class_names is None
    pre = loaded.preprocessing
    assert (pre.mode, pre.crop_pct, pre.resample, pre.mean) == ("crop", 0.9, "bilinear", (0.5,) * 3)
    pretrained_cfg["crop_mode"] = "squash"
    (timm_dir / "config.json").write_text(json.dumps(config))
    assert load_pretrained(timm_dir).preprocessing.mode == "stretch"


@pytest.mark.parametrize("std", [[0.229, 0, 0.225], [float("nan")] * 3, "wide"])
def test_a_hugging_face_processor_with_unusable_statistics_is_refused(tmp_path, std):
    from vitkit.pretrained import load_pretrained

    hf = tiny_hf_folder(tmp_path / "hf")
    processor = {"image_processor_type": "ViTImageProcessor", "image_mean": [0.5] * 3, "image_std": std}
    (hf / "preprocessor_config.json").write_text(json.dumps(processor))
    with pytest.raises(ValueError, match=r"preprocessor_config.json: preprocessing std must"):
        load_pretrained(hf)
    processor["image_std"] = 0.5  # one number for every channel, as transformers allows
    (hf / "preprocessor_config.json").write_text(json.dumps(processor))
    assert load_pretrained(hf).preprocessing.std in ((0.5,), (0.5, 0.5, 0.5))


def test_bad_preprocessing_values_are_named():
    with pytest.raises(ValueError, match="--resize-mode 'squash': use crop or stretch"):
        Preprocessing(32, mode="squash")
    with pytest.raises(ValueError, match="--resample 'cubic'"):
        Preprocessing(32, resample="cubic")
    with pytest.raises(ValueError, match="--crop-pct 1.5"):
        Preprocessing(32, crop_pct=1.5)


# ----------------------------------------------------------------------------- trained runs


def tiny_hf_folder(folder, num_labels=3):
    """A Hugging Face ViT classifier as save_pretrained writes it, with the ViTImageProcessor of a
    typical hub checkpoint (stretch, bilinear, mean = std = 0.5)."""
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=96,
        image_size=32,
        patch_size=8,
        num_labels=num_labels,
        id2label={i: f"class{i}" for i in range(num_labels)},
        label2id={f"class{i}": i for i in range(num_labels)},
    )
    transformers.ViTForImageClassification(cfg).save_pretrained(folder)
    processor = {
        "image_processor_type": "ViTImageProcessor",
        "size": {"height": 32, "width": 32},
        "resample": 2,
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three short runs on flowers-mini: vitkit's crop (with timm-style crop_pct and a bilinear
    filter), a stretch run, and a fine-tune of a Hugging Face folder (which keeps its own stretch)."""
    data = str(shared_dataset("flowers-mini"))
    root = tmp_path_factory.mktemp("prep-runs")
    crop = vitkit.train(data=data, out=str(root / "crop"), crop_pct=0.875, resample="bilinear", **TINY_VIT, **QUICK)
    stretch = vitkit.train(data=data, out=str(root / "stretch"), resize_mode="stretch", **TINY_VIT, **QUICK)
    hf = tiny_hf_folder(root / "hf-source")
    tuned = vitkit.train(data=data, out=str(root / "hf-tuned"), pretrained=str(hf), image_size=32, **QUICK)
    return {"crop": crop["run_dir"], "stretch": stretch["run_dir"], "hf-tuned": tuned["run_dir"]}


def saved_preprocessing(run_dir) -> Preprocessing:
    return Preprocessing.from_dict(json.loads((run_dir / "best" / "config.json").read_text())["preprocessing"])


@pytest.mark.slow
def test_runs_record_the_preprocessing_of_their_source(runs):
    crop, stretch, tuned = (saved_preprocessing(Path(runs[k])) for k in ("crop", "stretch", "hf-tuned"))
    assert (crop.mode, crop.crop_pct, crop.resample) == ("crop", 0.875, "bilinear")
    assert (stretch.mode, stretch.crop_pct, stretch.resample) == ("stretch", 1.0, "bicubic")
    assert (tuned.mode, tuned.resample, tuned.mean, tuned.std) == ("stretch", "bilinear", (0.5,) * 3, (0.5,) * 3)


@pytest.mark.slow
def test_eval_decodes_with_the_recorded_preprocessing(runs):
    """`vitkit eval` of the stretch run reproduces the metrics training reported on the same split."""
    reported = json.loads((Path(runs["stretch"]) / "results.json").read_text())
    assert reported["split"] == "val"
    again = vitkit.evaluate(runs["stretch"], split="val", device="cpu")
    assert again["loss"] == pytest.approx(reported["metrics"]["loss"], abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["crop", "stretch", "hf-tuned"])
def test_transformers_pipeline_on_the_export_agrees_with_vitkit_predict(runs, kind, tmp_path):
    run = runs[kind]
    out = tmp_path / "hf"
    export(run, out, "--format", "hf")
    photos = val_photos()
    ours = predict_paths(
        vitkit.load(run, device="cpu", backend="torch", precision="fp32"), photos, topk=1, progress=False
    )
    pipe = transformers.pipeline("image-classification", model=str(out), device="cpu")
    for path, mine in zip(photos, ours):
        theirs = pipe(Image.open(path), top_k=1)[0]
        best = mine["predictions"][0]
        assert theirs["label"] == best["label"], path
        assert theirs["score"] == pytest.approx(best["score"], abs=1e-3), path


@pytest.mark.slow
def test_preprocessing_survives_run_to_hf_export_to_pretrained_to_new_run(runs, tmp_path):
    original = saved_preprocessing(Path(runs["crop"]))
    export(runs["crop"], tmp_path / "hf", "--format", "hf")
    data = str(shared_dataset("flowers-mini"))
    # photos larger than the checkpoint's input fine-tune at a larger size unless one is asked for
    size = original.image_size
    vitkit.train(data=data, out=str(tmp_path / "again"), pretrained=str(tmp_path / "hf"), image_size=size, **QUICK)
    again = saved_preprocessing(tmp_path / "again")
    assert again.to_dict() == original.to_dict()


@pytest.mark.slow
def test_a_flag_overrides_the_pretrained_preprocessing(tmp_path):
    data = str(shared_dataset("flowers-mini"))
    hf = tiny_hf_folder(tmp_path / "hf")
    vitkit.train(
        data=data, out=str(tmp_path / "run"), pretrained=str(hf), resize_mode="crop", resample="bicubic", **QUICK
    )
    pre = saved_preprocessing(tmp_path / "run")
    assert (pre.mode, pre.resample, pre.mean) == ("crop", "bicubic", (0.5,) * 3)


# ----------------------------------------------------------------------------- ONNX


FAMILIES = [
    ("vit_micro_patch4_32", {}, Preprocessing(32, crop_pct=0.875, mean=(0.5,) * 3, std=(0.25,) * 3)),
    ("mixer_micro_patch4_32", {}, Preprocessing(32, mode="stretch", resample="bilinear", mean=(0.4,) * 3)),
    ("gmlp_micro_patch4_32", {}, Preprocessing(32, resample="lanczos", std=(0.3,) * 3)),
    ("fnet_micro_patch4_32", {}, Preprocessing(32, mode="stretch", crop_pct=0.9)),
    ("resnet18_cifar", {"widths": (16, 32, 32, 64)}, Preprocessing(32, mean=(0.45, 0.5, 0.55), std=(0.2,) * 3)),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,kw,pre", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_onnx_export_predicts_what_the_checkpoint_predicts(name, kw, pre, tmp_path):
    from vitkit.export.onnx import export_onnx

    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **kw).eval()
    save_model(model, tmp_path / "ckpt", class_names=list("abcde"), preprocessing=pre.to_dict())
    export_onnx(vitkit.load(tmp_path / "ckpt", device="cpu", backend="torch"), tmp_path / "m.onnx")
    onnx_clf = vitkit.load(tmp_path / "m.onnx")
    assert onnx_clf.backend == "onnxruntime" and onnx_clf.preprocessing == pre
    photos = val_photos()
    ours = predict_paths(
        vitkit.load(tmp_path / "ckpt", device="cpu", backend="torch", precision="fp32"), photos, progress=False
    )
    exported = predict_paths(onnx_clf, photos, progress=False)
    for a, b in zip(ours, exported):
        assert a["predictions"][0]["label"] == b["predictions"][0]["label"], a["path"]
        for x, y in zip(a["predictions"], b["predictions"]):
            assert x["score"] == pytest.approx(y["score"], abs=1e-4), a["path"]


@pytest.mark.slow
def test_predict_cli_on_an_onnx_file_uses_its_preprocessing(runs, tmp_path):
    """`vitkit predict model.onnx` equals `vitkit predict RUN` (PyTorch) on every photo."""
    onnx_path = tmp_path / "model.onnx"
    export(runs["crop"], onnx_path)
    photos = val_photos()
    proc = run_vitkit("predict", str(onnx_path), *map(str, photos), "--format", "json", "--topk", "3")
    assert proc.returncode == 0, proc.stderr
    exported = json.loads(proc.stdout)["results"]
    ours = predict_paths(
        vitkit.load(runs["crop"], device="cpu", backend="torch", precision="fp32"), photos, topk=3, progress=False
    )
    for a, b in zip(exported, ours):
        assert a["predictions"][0]["label"] == b["predictions"][0]["label"], a["path"]
        for x, y in zip(a["predictions"], b["predictions"]):
            assert x["score"] == pytest.approx(y["score"], abs=1e-4), a["path"]


# ----------------------------------------------------------------------------- bounded decode


def test_thin_and_oversized_images_are_refused_before_resizing(tmp_path):
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 1000), (9, 9, 9)).save(thin)
    with pytest.raises(BadImageError, match=r"thin.png: 1x1000 pixels is more than 50 times taller than wide") as info:
        open_image(thin)
    assert info.value.kind == "shape"
    Image.new("RGB", (1000, 1), (9, 9, 9)).save(thin)
    with pytest.raises(BadImageError, match=r"thin.png: 1000x1 pixels is more than 50 times wider than tall"):
        open_image(thin)
    wide = Image.new("RGB", (40, 1), (9, 9, 9))  # allowed ratio, but at 700 px it would be 28000x700
    with pytest.raises(BadImageError, match=r"wide: 40x1 pixels would be resized to 28000x700"):
        Preprocessing(700).fit(wide, "wide")
    assert Preprocessing(700, mode="stretch").fit(wide).size == (700, 700)


def test_large_jpegs_are_decoded_at_a_reduced_scale(tmp_path):
    big = tmp_path / "big.jpg"
    ramp = np.linspace(0, 255, 6000, dtype=np.float32)
    pixels = np.broadcast_to(ramp[None, :, None], (3000, 6000, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(big, quality=80)  # 18M pixels
    assert open_image(big).size == (6000, 3000)
    assert open_image(big, min_side=300).size == (750, 375)  # 1/8 scale keeps both sides >= 300
    out = Preprocessing(64).load_array(big)
    assert out.shape == (64, 64, 3) and abs(float(out[..., 0].mean()) - 127.5) < 10


BOUNDED_SCRIPT = r"""
import json, resource, sys
import vitkit
from vitkit.inference.predict import predict_paths
from vitkit.serve.app import create_app
from starlette.testclient import TestClient

ckpt, image = sys.argv[1], sys.argv[2]
clf = vitkit.load(ckpt, device="cpu", backend="torch", precision="fp32")
with TestClient(create_app(clf)) as client:
    vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")) * 1024
    # a hard cap: an unbounded decode fails here instead of taking the machine's memory
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), vm + (1 << 30)))
    predicted = predict_paths(clf, [image], progress=False)
    with open(image, "rb") as f:
        response = client.post("/predict", files={"file": ("thin.png", f.read(), "image/png")})
print(json.dumps({"predict": predicted[0], "status": response.status_code, "body": response.json()}))
"""


def test_a_one_by_a_million_png_is_refused_under_a_memory_cap(tmp_path):
    """The 4 KB PNG that once took a server to 6 GB: refused by predict and by the server's decode, in a
    process that may not grow by 1 GiB."""
    thin = tmp_path / "thin.png"
    Image.new("L", (1, 1_000_000), 128).save(thin)
    assert thin.stat().st_size < 10_000
    torch.manual_seed(0)
    pre = Preprocessing(32, mean=(0.5,) * 3, std=(0.25,) * 3)
    model = create_model("vit_micro_patch4_32", num_classes=3)
    save_model(model, tmp_path / "ckpt", class_names=list("abc"), preprocessing=pre.to_dict())
    proc = subprocess.run(
        [sys.executable, "-c", BOUNDED_SCRIPT, str(tmp_path / "ckpt"), str(thin)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert "1x1000000 pixels is more than 50 times taller than wide" in report["predict"]["error"]
    assert report["status"] == 400 and "1x1000000 pixels" in report["body"]["error"]
