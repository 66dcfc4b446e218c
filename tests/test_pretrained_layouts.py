"""Published checkpoint layouts, independent of vitkit's own names: timm's ViT-Ti/16 key list and shapes
(as in timm's vit_tiny_patch16_224.augreg_in21k_ft_in1k and DeiT-Ti), checked against a reference forward
written from timm's definition; the timm hub folder and the `hf-vit-finetune` preset end to end through
the loopback hub mirror."""

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import run_vitkit, subprocess_env, write_class_folders
from hub_mirror import HubMirror
from safetensors.torch import load_file, save_file

from vitkit.pretrained import load_pretrained

# timm's vit_tiny_patch16_224: width 192, 12 blocks of 3 heads, MLP 768, 16 px patches at 224 px, a class
# token, ImageNet-1k head. 5,717,416 parameters in 152 tensors, as published.
WIDTH, DEPTH, HEADS, MLP, CLASSES = 192, 12, 3, 768, 1000
TIMM_REPO = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
TIMM_CONFIG = {  # the repo's config.json
    "architecture": "vit_tiny_patch16_224",
    "num_classes": 1000,
    "num_features": 192,
    "global_pool": "token",
    "pretrained_cfg": {
        "tag": "augreg_in21k_ft_in1k",
        "custom_load": False,
        "input_size": [3, 224, 224],
        "fixed_input_size": True,
        "interpolation": "bicubic",
        "crop_pct": 0.9,
        "crop_mode": "center",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "num_classes": 1000,
        "pool_size": None,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    },
}


def timm_vit_tiny_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {
        "cls_token": (1, 1, WIDTH),
        "pos_embed": (1, 197, WIDTH),
        "patch_embed.proj.weight": (WIDTH, 3, 16, 16),
        "patch_embed.proj.bias": (WIDTH,),
    }
    for i in range(DEPTH):
        shapes.update(
            {
                f"blocks.{i}.norm1.weight": (WIDTH,),
                f"blocks.{i}.norm1.bias": (WIDTH,),
                f"blocks.{i}.attn.qkv.weight": (3 * WIDTH, WIDTH),
                f"blocks.{i}.attn.qkv.bias": (3 * WIDTH,),
                f"blocks.{i}.attn.proj.weight": (WIDTH, WIDTH),
                f"blocks.{i}.attn.proj.bias": (WIDTH,),
                f"blocks.{i}.norm2.weight": (WIDTH,),
                f"blocks.{i}.norm2.bias": (WIDTH,),
                f"blocks.{i}.mlp.fc1.weight": (MLP, WIDTH),
                f"blocks.{i}.mlp.fc1.bias": (MLP,),
                f"blocks.{i}.mlp.fc2.weight": (WIDTH, MLP),
                f"blocks.{i}.mlp.fc2.bias": (WIDTH,),
            }
        )
    shapes.update(
        {"norm.weight": (WIDTH,), "norm.bias": (WIDTH,), "head.weight": (CLASSES, WIDTH), "head.bias": (CLASSES,)}
    )
    return shapes


@pytest.fixture(scope="module")
def timm_state() -> dict[str, torch.Tensor]:
    """Random values in timm's layout; norms near 1 so every block matters."""
    shapes = timm_vit_tiny_shapes()
    assert len(shapes) == 152 and sum(torch.Size(s).numel() for s in shapes.values()) == 5_717_416
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in shapes.items():
        scale = 0.02 if name.endswith("weight") and len(shape) > 1 or name in ("cls_token", "pos_embed") else 0.1
        value = torch.randn(shape, generator=g) * scale
        is_norm_weight = name.endswith("weight") and name.split(".")[-2].startswith("norm")
        state[name] = value + 1 if is_norm_weight else value
    return state


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """timm's VisionTransformer.forward for this layout: pre-norm blocks, LayerNorm eps 1e-6, exact GELU,
    qkv split as (3, heads, head_dim), class-token pooling."""

    def norm(t, prefix):
        return F.layer_norm(t, (WIDTH,), state[prefix + ".weight"], state[prefix + ".bias"], eps=1e-6)

    def linear(t, prefix):
        return F.linear(t, state[prefix + ".weight"], state[prefix + ".bias"])

    t = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=16)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([state["cls_token"].expand(len(t), -1, -1), t], dim=1) + state["pos_embed"]
    for i in range(DEPTH):
        b = f"blocks.{i}"
        h = norm(t, f"{b}.norm1")
        n, tokens, _ = h.shape
        q, k, v = linear(h, f"{b}.attn.qkv").reshape(n, tokens, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * (WIDTH // HEADS) ** -0.5).softmax(-1)
        t = t + linear((attention @ v).transpose(1, 2).reshape(n, tokens, WIDTH), f"{b}.attn.proj")
        t = t + linear(F.gelu(linear(norm(t, f"{b}.norm2"), f"{b}.mlp.fc1")), f"{b}.mlp.fc2")
    return linear(norm(t, "norm")[:, 0], "head")


def timm_hub_folder(folder: Path, state: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(TIMM_CONFIG, indent=2))
    save_file(state, str(folder / "model.safetensors"))
    return folder


def test_timm_and_deit_checkpoints_reproduce_timm_s_forward(timm_state, tmp_path):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference_forward(timm_state, x)
    save_file(timm_state, str(tmp_path / "vit_tiny_patch16_224.safetensors"))
    torch.save({"model": timm_state}, tmp_path / "deit_tiny_patch16_224.pth")  # DeiT's release format
    sources = [
        tmp_path / "vit_tiny_patch16_224.safetensors",
        tmp_path / "deit_tiny_patch16_224.pth",
        timm_hub_folder(tmp_path / "hub-folder", timm_state),
    ]
    for source in sources:
        loaded = load_pretrained(source)
        model, pre = loaded.model, loaded.preprocessing
        assert (model.config.num_heads, model.config.depth, model.config.num_classes) == (HEADS, DEPTH, CLASSES)
        assert pre.image_size == 224 and loaded.class_names is None and loaded.has_head
        # timm builds every ViT norm as LayerNorm(eps=1e-6); at these activations 1e-5 would hide in the noise
        assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-6}
        with torch.no_grad():
            assert (model.eval()(x) - expected).abs().max() < 1e-4, source.name
    assert pre.mean == (0.5,) * 3 and pre.std == (0.5,) * 3 and pre.resample == "bicubic"  # pretrained_cfg


def test_a_timm_backbone_without_its_head_loads(timm_state, tmp_path):
    backbone = {k: v for k, v in timm_state.items() if not k.startswith("head.")}
    save_file(backbone, str(tmp_path / "vit_tiny_patch16_224.safetensors"))
    loaded = load_pretrained(tmp_path / "vit_tiny_patch16_224.safetensors")
    model = loaded.model
    assert not loaded.has_head
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        features = model.pool(model.forward_features(x))
        identity_head = {"head.weight": torch.eye(WIDTH), "head.bias": torch.zeros(WIDTH)}
        expected = reference_forward({**timm_state, **identity_head}, x)
    assert (features - expected).abs().max() < 1e-4


@pytest.fixture
def hub(tmp_path):
    mirror = HubMirror(tmp_path / "hub")
    yield mirror
    mirror.close()


def hub_env(hub, tmp_path) -> dict:
    env = subprocess_env()
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    return env


def downloaded(hub, repo: str) -> set[str]:
    return {r.split("/resolve/", 1)[1].split("/", 1)[1] for r in hub.requests if f"/{repo}/resolve/" in r}


@pytest.mark.slow
def test_timm_hub_repo_fine_tunes_through_the_download_path(timm_state, hub, tmp_path):
    """A linear probe from the timm hub id: the backbone in the run is exactly the repo's weights."""
    timm_hub_folder(hub.root / TIMM_REPO, timm_state)
    data = write_class_folders(tmp_path / "photos", per_class=6)
    out = tmp_path / "run"
    proc = run_vitkit(
        "train", "--data", str(data), "--pretrained", TIMM_REPO, "--image-size", "32", "--freeze-backbone",
        "--epochs", "1", "--batch-size", "8", "--out", str(out), "--no-progress", "--no-plots",
        env=hub_env(hub, tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"config.json", "model.safetensors"} <= downloaded(hub, TIMM_REPO)
    config = json.loads((out / "last" / "config.json").read_text())
    assert (config["config"]["embed_dim"], config["config"]["depth"], config["config"]["num_heads"]) == (192, 12, 3)
    assert config["config"]["num_classes"] == 3  # a new head for the three classes
    assert config["preprocessing"]["mean"] == [0.5] * 3 and config["preprocessing"]["image_size"] == 32
    tuned = load_file(str(out / "last" / "model.safetensors"))
    for key in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.11.mlp.fc2.bias", "norm.weight"):
        assert torch.equal(tuned[key], timm_state[key]), key


@pytest.mark.slow
def test_hf_vit_finetune_preset_end_to_end(hub, tmp_path):
    """The preset as published: google/vit-base-patch16-224-in21k (here a small model in that repo's
    layout) fine-tuned on a folder at 224 px with a linear schedule, AdamW 2e-4, batch 16, 3 epochs."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96, image_size=224, patch_size=16
    )
    transformers.ViTModel(config, add_pooling_layer=True).save_pretrained(tmp_path / "in21k")
    repo = hub.root / "google" / "vit-base-patch16-224-in21k"
    repo.mkdir(parents=True)
    for f in (tmp_path / "in21k").iterdir():
        (repo / f.name).write_bytes(f.read_bytes())
    (repo / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "do_normalize": True,
                "do_resize": True,
                "feature_extractor_type": "ViTFeatureExtractor",
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "resample": 2,
                "size": 224,
            }
        )
    )
    data = write_class_folders(tmp_path / "photos", per_class=10)  # 30 images, 20% held out: 24 + 6
    out = tmp_path / "run"
    proc = run_vitkit(
        "train", "--preset", "hf-vit-finetune", "--data", str(data), "--out", str(out), "--no-progress",
        env=hub_env(hub, tmp_path), timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"config.json", "model.safetensors"} <= downloaded(hub, "google/vit-base-patch16-224-in21k")
    args = yaml.safe_load((out / "args.yaml").read_text())
    assert args["pretrained"] == "google/vit-base-patch16-224-in21k" and args["preset"] == "hf-vit-finetune"
    assert (args["optimizer"], args["lr"], args["weight_decay"], args["batch_size"], args["epochs"]) == (
        "adamw",
        2e-4,
        0.01,
        16,
        3,
    )
    with open(out / "metrics.csv") as f:
        lr = [float(row["lr"]) for row in csv.DictReader(f)]
    assert lr == pytest.approx([2e-4, 2e-4 * 2 / 3, 2e-4 / 3], rel=1e-9)  # one step per epoch, linear to zero
    checkpoint = json.loads((out / "best" / "config.json").read_text())
    assert checkpoint["config"]["embed_dim"] == 48 and checkpoint["config"]["num_classes"] == 3
    assert checkpoint["preprocessing"]["image_size"] == 224 and checkpoint["preprocessing"]["mean"] == [0.5] * 3
    results = json.loads((out / "results.json").read_text())
    assert results["split"] == "val" and results["metrics"]["count"] == 6
