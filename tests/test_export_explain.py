"""ONNX export parity, the onnxruntime backend, and explanations for every family."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_vitkit
from PIL import Image

import vitkit
from vitkit.errors import VitkitError
from vitkit.export.onnx import export_onnx
from vitkit.inference import Classifier, OnnxModel
from vitkit.models import create_model, save_model
from vitkit.viz.explain import attention_maps, explain_tensor


@pytest.fixture
def onnxruntime():
    """Only the export and ONNX Runtime tests need it; the explanation tests run without."""
    return pytest.importorskip("onnxruntime")


def checkpoint(tmp_path, name, **kw):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **kw).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval-mode export is really checked
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    meta = {
        "class_names": list("abcde"),
        "preprocessing": {"image_size": model.config.image_size, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3},
    }
    save_model(model, tmp_path / name, **meta)
    return model, tmp_path / name


@pytest.mark.parametrize(
    "name,kw",
    [
        ("vit_micro_patch4_32", {}),
        pytest.param("vit_micro_patch4_32", {"pool": "cls", "class_token": True}, marks=pytest.mark.slow),
        pytest.param(  # cifar-cct
            "vit_micro_patch4_32", {"stem": "conv", "pool": "seq", "class_token": False}, marks=pytest.mark.slow
        ),
        pytest.param(  # cifar-hybrid
            "vit_micro_patch4_32",
            {"stem": "resnet", "stem_width": 8, "pool": "seq", "class_token": False},
            marks=pytest.mark.slow,
        ),
        ("mixer_micro_patch4_32", {}),
        ("fnet_micro_patch4_32", {}),
        ("gmlp_micro_patch4_32", {}),
        ("resnet18_cifar", {"widths": (16, 32, 32, 64)}),
    ],
)
def test_onnx_parity_batch_1_and_7(tmp_path, name, kw, onnxruntime):
    model, ckpt = checkpoint(tmp_path, name, **kw)
    report = export_onnx(vitkit.load(ckpt, device="cpu", backend="torch"), tmp_path / "m.onnx")
    assert set(report) == {"batch_1", "batch_7"}
    session = OnnxModel(tmp_path / "m.onnx")
    for b in (1, 7):
        x = torch.randn(b, 3, 32, 32)
        diff = (session(x) - model(x).detach()).abs().max().item()
        assert diff < 1e-4, (b, diff)
    assert session.meta["class_names"] == list("abcde")


@pytest.mark.slow
def test_onnxruntime_backend_predicts_like_torch(digits_run, digit_images, tmp_path, onnxruntime):
    out, _ = digits_run
    paths, _ = digit_images
    results = {}
    for backend in ("torch", "onnxruntime"):
        proc = run_vitkit(
            "predict", str(out), *map(str, paths), "--format", "json", "--backend", backend, "--precision", "fp32"
        )
        assert proc.returncode == 0, proc.stderr
        results[backend] = json.loads(proc.stdout)["results"]
    for a, b in zip(results["torch"], results["onnxruntime"]):
        assert a["predictions"][0]["label"] == b["predictions"][0]["label"]
        assert a["predictions"][0]["score"] == pytest.approx(b["predictions"][0]["score"], abs=1e-4)
    # the exported file on its own carries labels and preprocessing
    proc = run_vitkit("export", str(out), str(tmp_path / "d.onnx"))
    assert proc.returncode == 0, proc.stderr
    standalone = vitkit.load(tmp_path / "d.onnx")
    assert standalone.backend == "onnxruntime" and standalone.class_names == [str(i) for i in range(10)]


def test_a_non_onnx_file_is_refused(tmp_path, onnxruntime):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        vitkit.load(bad)


def test_export_into_a_folder_names_the_file_after_the_checkpoint(tmp_path, onnxruntime):
    """As cp does: OUT an existing folder takes the export as CHECKPOINT.onnx."""
    _, ckpt = checkpoint(tmp_path, "vit_micro_patch4_32", depth=1, embed_dim=32)
    folder = tmp_path / "exports"
    folder.mkdir()
    proc = run_vitkit("export", str(ckpt), str(folder))
    assert proc.returncode == 0, proc.stderr
    written = folder / f"{ckpt.name}.onnx"
    assert json.loads(proc.stdout)["onnx"] == str(written)
    assert [p.name for p in folder.iterdir()] == [written.name]
    assert vitkit.load(written).class_names == list("abcde")


@pytest.mark.parametrize("pool,class_token", [("cls", True), ("mean", True), ("mean", False), ("flatten", False)])
def test_attention_rollout_every_pooling(pool, class_token):
    model = create_model("vit_micro_patch4_32", pool=pool, class_token=class_token).eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    maps = attention_maps(model, x)
    assert maps["rollout"].shape == (2, 8, 8)
    assert ("cls_last" in maps) == class_token
    for m in maps.values():
        assert torch.isfinite(m).all() and m.min() == 0 and m.max() == 1
    assert torch.equal(model(x), before)  # capture switched off again, same outputs


def test_rollout_follows_the_evidence():
    """A model whose attention all goes to one patch: rollout must light up that patch."""
    model = create_model("vit_micro_patch4_32", depth=1, class_token=True, pool="cls").eval()
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.zero_()
        model.blocks[0].attn.qkv.bias.zero_()
        model.pos_embed.zero_()
        # keys: a large score only for the token whose position embedding carries a marker
        model.pos_embed[0, 1 + 27, 0] = 10.0
        dim = model.config.embed_dim
        model.blocks[0].attn.qkv.bias[:dim] = 1.0  # queries all ones
        model.blocks[0].attn.qkv.weight[dim, 0] = 10.0  # key 0 of head 0 reads the marker
    maps = attention_maps(model, torch.zeros(1, 3, 32, 32))
    assert maps["rollout"][0].flatten().argmax().item() == 27


@pytest.mark.parametrize(
    "name", ["mixer_micro_patch4_32", "fnet_micro_patch4_32", "gmlp_micro_patch4_32", "resnet18_cifar"]
)
def test_saliency_for_non_attention_models(name):
    model = create_model(name, num_classes=3).eval()
    clf = Classifier(model, {"class_names": list("abc")}, device="cpu")
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    probs, maps = explain_tensor(clf, images)
    assert probs.shape == (2, 3) and set(maps) == {"saliency"}
    assert maps["saliency"].shape == (2, 32, 32) and torch.isfinite(maps["saliency"]).all()


def test_explain_cli_writes_a_figure(digits_run, digit_images, tmp_path):
    out, _ = digits_run
    png = tmp_path / "why.png"
    proc = run_vitkit("explain", str(out), str(digit_images[0][0]), "--out", str(png))
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert len(printed["predictions"]) == 5 and printed["method"] == "rollout"  # patch tokens: rollout maps
    img = np.asarray(Image.open(png).convert("RGB"))
    # the photo as given, the model's input, the rollout and the bars
    assert img.shape[1] > 3 * img.shape[0] and img.std() > 10


def test_explain_takes_many_photos_in_one_command(digits_run, digit_images, tmp_path):
    """Loading torch, the model and matplotlib is most of one explanation: many photos share them."""
    out, _ = digits_run
    paths = [str(p) for p in digit_images[0][:3]]
    proc = run_vitkit("explain", str(out), *paths, "--out", str(tmp_path / "why"))
    assert proc.returncode == 0, proc.stderr
    printed = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [p["path"] for p in printed] == paths
    assert sorted(f.name for f in (tmp_path / "why").iterdir()) == sorted(Path(p).stem + ".png" for p in paths)


def test_hybrid_models_get_grad_cam_on_their_token_grid_and_the_reason():
    """Tokens from conv stages already mix much of the image: rollout cannot place evidence on them, so
    auto picks Grad-CAM on the token grid, and asking for rollout says what it cannot show."""
    from vitkit.viz.explain import choose_method, method_note

    torch.manual_seed(0)
    model = create_model("cifar-hybrid", num_classes=3).eval()
    clf = Classifier(model, {"class_names": list("abc")}, device="cpu")
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    probs, maps = explain_tensor(clf, images)
    assert set(maps) == {"gradcam"} and maps["gradcam"].shape == (2, 32, 32)
    # scaled to 1 on the 4x4 token grid; upsampling to pixels may lower the peak between token centres
    assert torch.isfinite(maps["gradcam"]).all() and 0.5 < maps["gradcam"].amax() <= 1 + 1e-6
    assert choose_method(model) == "gradcam" and choose_method(create_model("vit_micro_patch4_32")) == "rollout"
    assert "not where the evidence is" in method_note(model, "rollout")
    assert set(explain_tensor(clf, images, "rollout")[1]) == {"rollout"}  # still available by flag


def test_a_method_the_model_cannot_draw_is_refused_with_what_it_can():
    from vitkit.viz.explain import choose_method

    resnet, mixer = create_model("cifar-resnet", num_classes=3), create_model("cifar-mixer", num_classes=3)
    with pytest.raises(VitkitError, match="--method rollout needs a model with attention"):
        choose_method(mixer, "rollout")
    with pytest.raises(VitkitError, match="--method gradcam works on token models.*use saliency"):
        choose_method(resnet, "gradcam")
    assert choose_method(resnet) == "saliency" and choose_method(mixer, "gradcam") == "gradcam"


def test_a_blank_grad_cam_map_comes_with_the_reason():
    """Where no token raises the predicted class, ReLU clears every cell: the figure says so, not just blank."""
    from vitkit.viz.explain import BLANK_GRADCAM_NOTE, method_note

    model = create_model("cifar-hybrid", num_classes=3).eval()
    assert method_note(model, "gradcam", {"gradcam": torch.zeros(1, 32, 32)}) == BLANK_GRADCAM_NOTE
    drawn = torch.zeros(1, 32, 32)
    drawn[0, 3, 4] = 1.0
    assert method_note(model, "gradcam", {"gradcam": drawn}) == method_note(model, "gradcam")
    assert "Grad-CAM on the 4x4 token grid" in method_note(model, "gradcam")
