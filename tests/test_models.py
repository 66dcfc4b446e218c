"""Model zoo: shapes, gradients, determinism, safetensors round trip, resizing and bad input."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from vitkit.models import count_parameters, create_model, list_models, load_model, save_model
from vitkit.models.resnet import BasicBlock

# One small, fast representative per family (and every preset) at 32 px.
SMALL = {
    "vit": dict(name="vit_micro_patch4_32"),
    "vit_cct": dict(name="vit_micro_patch4_32", stem="conv", pool="seq"),
    "vit_hybrid": dict(name="vit_micro_patch4_32", stem="resnet", stem_width=8, stem_blocks=2, pool="seq"),
    "vit_spt_lsa": dict(name="vit_micro_patch4_32", stem="spt", lsa=True, class_token=True, pool="cls"),
    "mixer": dict(name="mixer_micro_patch4_32"),
    "fnet": dict(name="fnet_micro_patch4_32"),
    "gmlp": dict(name="gmlp_micro_patch4_32"),
    "resnet": dict(name="resnet18_cifar", widths=(8, 16, 32, 64)),
    "resnet50v2": dict(name="resnet50v2_cifar", widths=(8, 8, 8, 8)),
    "fastnet": dict(name="fastnet_cifar", widths=(8, 16, 16)),
}


def small_model(family, **kw):
    spec = dict(SMALL[family])
    return create_model(spec.pop("name"), **{**spec, **kw})


def test_every_family_and_preset_is_listed():
    names = list_models()
    for prefix in ("vit_", "mixer_", "fnet_", "gmlp_", "resnet"):
        assert any(n.startswith(prefix) for n in names), prefix
    for preset in (
        "keras-vit-cifar100",
        "keras-mixer-cifar100",
        "keras-fnet-cifar100",
        "keras-gmlp-cifar100",
        "d2l-vit-fashion-mnist",
    ):
        assert preset in list_models("presets")


def test_keras_presets_have_the_keras_parameter_counts():
    # Trainable parameter counts of the Keras 3 models (model.count_params() minus the 7 statistics of
    # the Normalization layer). The Mixer shares one LayerNorm per block as the Keras block does.
    assert count_parameters(create_model("keras-vit-cifar100")) == 21_759_012
    assert count_parameters(create_model("keras-gmlp-cifar100")) == 885_348
    assert count_parameters(create_model("keras-mixer-cifar100")) == 242_788
    # FNet: Keras example's trainable position embedding included (64 x 256)
    assert count_parameters(create_model("keras-fnet-cifar100")) == 621_924


def test_hf_timm_standard_sizes():
    assert count_parameters(create_model("vit_tiny_patch16_224")) == 5_717_416
    assert count_parameters(create_model("vit_small_patch16_224")) == 22_050_664
    assert count_parameters(create_model("vit_base_patch16_224")) == 86_567_656


@pytest.mark.parametrize("family", list(SMALL))
def test_forward_backward_reaches_every_parameter(family):
    """Every trained parameter: FastNet keeps its whitening filters and BatchNorm scales fixed by design."""
    torch.manual_seed(0)
    model = small_model(family, num_classes=7)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7)
    logits.logsumexp(-1).sum().backward()
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fixed = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert not fixed or family == "fastnet", fixed
    missing = [n for n, p in trained if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"


def test_checkpoint_with_a_sequence_pool_bias_loads_and_predicts_the_same():
    # Earlier vitkit checkpoints of the CCT/hybrid recipes carry seq_pool.bias, which the softmax over
    # tokens cancels; they must still load strictly and give the same logits.
    torch.manual_seed(0)
    model = small_model("vit_hybrid").eval()
    state = {**model.state_dict(), "seq_pool.bias": torch.tensor([3.0])}
    reloaded = small_model("vit_hybrid").eval()
    reloaded.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(reloaded(x), model(x))


@pytest.mark.parametrize(
    "name",
    [
        "keras-vit-cifar100",
        "keras-mixer-cifar100",
        "keras-fnet-cifar100",
        "keras-gmlp-cifar100",
        "d2l-vit-fashion-mnist",
    ],
)
def test_presets_run_on_their_inputs_and_on_32px(name):
    model = create_model(name)
    cfg = model.config
    x = torch.randn(2, cfg.in_chans, cfg.image_size, cfg.image_size)
    assert model(x).shape == (2, cfg.num_classes)
    # the must-show check: every family on a (2, 3, 32, 32) batch
    small = create_model(name, image_size=32, in_chans=3, patch_size=4 if name.startswith("keras") else 16)
    out = small(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, cfg.num_classes)


@pytest.mark.parametrize(
    "pool,class_token", [("cls", True), ("mean", True), ("mean", False), ("flatten", False), ("flatten", True)]
)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_vit_pooling_and_channels(pool, class_token, in_chans):
    model = create_model(
        "vit_micro_patch4_32",
        num_classes=5,
        in_chans=in_chans,
        pool=pool,
        class_token=class_token,
        head_hidden=(32,) if pool == "flatten" else (),
    )
    assert model(torch.randn(3, in_chans, 32, 32)).shape == (3, 5)


@pytest.mark.parametrize("family", ["mixer", "fnet", "gmlp", "resnet"])
def test_single_channel_inputs(family):
    assert small_model(family, in_chans=1, num_classes=4)(torch.randn(2, 1, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("family", list(SMALL))
def test_seeded_construction_is_deterministic(family):
    x = torch.randn(2, 3, 32, 32)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append(small_model(family).eval()(x))
    torch.manual_seed(124)
    other = small_model(family).eval()(x)
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], other)


@pytest.mark.parametrize("family", list(SMALL))
def test_safetensors_round_trip_gives_identical_logits(family, tmp_path):
    model = small_model(family, num_classes=3).eval()
    save_model(model, tmp_path / "ckpt", class_names=["a", "b", "c"])
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes()[:8]  # real file
    loaded, meta = load_model(tmp_path / "ckpt")
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(model(x), loaded.eval()(x))
    assert meta["class_names"] == ["a", "b", "c"]
    assert type(loaded) is type(model)


@pytest.mark.parametrize("class_token,pool", [(True, "cls"), (False, "mean")])
def test_vit_position_embedding_resize(class_token, pool, tmp_path):
    model = create_model("vit_micro_patch4_32", class_token=class_token, pool=pool).eval()
    before = model.pos_embed.detach().clone()
    save_model(model, tmp_path / "ckpt")
    model.set_image_size(48)
    assert model.pos_embed.shape[1] == 144 + int(class_token)
    out = model(torch.randn(2, 3, 48, 48))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    if class_token:
        assert torch.equal(model.pos_embed[:, :1], before[:, :1])
    # a checkpoint trained at 32 px loads into a 64 px model by interpolation
    big = create_model("vit_micro_patch4_32", class_token=class_token, pool=pool, image_size=64)
    big.load_state_dict(load_model(tmp_path / "ckpt")[0].state_dict())
    assert torch.isfinite(big(torch.randn(1, 3, 64, 64))).all()
    # interpolating back to the original grid reproduces the original table closely
    model.set_image_size(32)
    assert torch.allclose(model.pos_embed, before, atol=0.02)


def test_unknown_model_lists_available_names():
    with pytest.raises(ValueError, match="vit_tiny_patch16_224") as err:
        create_model("vit_tiny_patch16")
    assert "Did you mean" in str(err.value)


def test_bad_combinations_name_the_argument():
    with pytest.raises(ValueError, match="image_size=30 is not divisible by patch_size=4"):
        create_model("vit_micro_patch4_32", image_size=30)
    with pytest.raises(ValueError, match="in_chans=1"):
        create_model("vit_micro_patch4_32")(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="in_chans=1"):
        small_model("resnet")(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="no option.*embed_dims"):
        create_model("vit_micro_patch4_32", embed_dims=3)
    with pytest.raises(ValueError, match="class_token"):
        create_model("vit_micro_patch4_32", pool="cls", class_token=False)
    with pytest.raises(ValueError, match="pool='flatten'"):
        create_model("keras-vit-cifar100").set_image_size(96)
    with pytest.raises(ValueError, match="image_size"):
        small_model("mixer").set_image_size(64)


def test_locality_self_attention_never_attends_to_itself():
    from vitkit.viz.explain import attention_maps

    model = create_model("vit_micro_patch4_32", lsa=True).eval()
    for block in model.blocks:
        block.attn.keep_attention = True
    model(torch.randn(2, 3, 32, 32))
    for block in model.blocks:
        attn = block.attn.attention
        assert torch.all(attn.diagonal(dim1=-2, dim2=-1) == 0)
        assert torch.allclose(attn.sum(-1), torch.ones(()))
    # the SDPA path computes the same as the explicit one
    for block in model.blocks:
        block.attn.keep_attention = False
    x = torch.randn(2, 3, 32, 32)
    fast = model(x)
    attention_maps(model, x)  # runs the explicit path internally
    for block in model.blocks:
        block.attn.keep_attention = True
    assert torch.allclose(model(x), fast, atol=1e-5)


def test_shifted_patch_tokens_see_their_neighbours():
    from vitkit.models.layers import ShiftedPatchTokenizer

    tok = ShiftedPatchTokenizer(8, 4, 1, 5 * 16)
    tok.norm = torch.nn.Identity()  # look at the raw stacked patches
    with torch.no_grad():
        tok.proj.weight.copy_(torch.eye(80))
        tok.proj.bias.zero_()
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 3, 3] = 1.0  # bottom-right pixel of the top-left patch
    tokens = tok(x)[0].view(4, 5, 16)  # (patch, [image + 4 shifts], pixels)
    assert tokens[0, 0].sum() == 1  # in its own patch, unshifted
    assert tokens[3, 0].sum() == 0 and tokens[3, 1:].sum() == 1  # the bottom-right patch sees it through one shift


def test_conv_stem_token_grid():
    model = create_model("vit_micro_patch4_32", stem="conv", conv_layers=3, pool="seq")
    assert model.patch_embed.num_patches == 16 and model.patch_embed.stride == 8
    with pytest.raises(ValueError, match="image_size=36 is not divisible by patch_size=8"):
        create_model("vit_micro_patch4_32", stem="conv", conv_layers=3, image_size=36)


def test_resnet_stem_tokens_are_its_feature_map_cells():
    """The hybrid stem halves the resolution once per stage: 8x8 tokens at 32 px after 2 stages, 4x4
    after 3, each the 1x1-projected feature vector of its cell."""
    model = create_model("vit_micro_patch4_32", stem="resnet", stem_width=8, conv_layers=3, pool="seq")
    stem = model.patch_embed
    assert stem.num_patches == 16 and stem.stride == 8
    x = torch.randn(2, 3, 32, 32)
    tokens = stem(x)
    feature_map = stem.convs(x)
    assert tokens.shape == (2, 16, 128) and feature_map.shape == (2, 128, 4, 4)
    assert torch.equal(tokens[:, 5], feature_map[:, :, 1, 1])  # token 5 = row 1, column 1
    # the full-resolution stage and three halving ones, one block each (two with stem_blocks=2)
    assert sum(isinstance(m, BasicBlock) for m in stem.convs) == 4
    deeper = create_model("vit_micro_patch4_32", stem="resnet", stem_blocks=2).patch_embed
    assert sum(isinstance(m, BasicBlock) for m in deeper.convs) == 6


def test_resnet_stem_token_stride_projects_in_place_of_the_last_stage():
    """With stem_token_stride=2 the strided 3x3 token projection does the last halving: one stage of
    blocks fewer, the same token grid (4x4 at 32 px and at 28 px), each token a 3x3 window of the
    last stage's map."""
    kw = dict(stem="resnet", stem_width=8, stem_blocks=2, conv_layers=3, pool="seq")
    stem = create_model("vit_micro_patch4_32", stem_token_stride=2, **kw).patch_embed
    assert sum(isinstance(m, BasicBlock) for m in stem.convs) == 6  # stages at 8, 16, 32 channels
    assert [m.conv2.out_channels for m in stem.convs if isinstance(m, BasicBlock)][-1] == 32
    projection = stem.convs[-1]
    assert projection.kernel_size == (3, 3) and projection.stride == (2, 2)
    for size in (32, 28):
        x = torch.randn(2, 3, size, size)
        assert stem(x).shape == (2, 16, 128) and stem.grid_for(size) == 4
        hidden = stem.convs[:-1](x)
        # token 5 (row 1, column 1) is the projection of the 3x3 window around the map's cell (2, 2)
        window = F.conv2d(hidden[:, :, 1:4, 1:4], projection.weight, projection.bias)
        assert torch.allclose(stem(x)[:, 5], window.flatten(1), atol=1e-5)
    full = create_model("vit_micro_patch4_32", **kw).patch_embed
    assert sum(isinstance(m, BasicBlock) for m in full.convs) == 8 and full.convs[-1].kernel_size == (1, 1)
    with pytest.raises(ValueError, match="stem_token_stride=3 must be 1, or 2"):
        create_model("vit_micro_patch4_32", stem_token_stride=3, **kw)


def test_every_preset_builds_and_runs_at_its_size():
    from vitkit.models import PRESETS, get_preset
    from vitkit.training.config import TrainConfig

    options = {f.name for f in dataclasses.fields(TrainConfig)}

    for name, preset in PRESETS.items():
        model = create_model(name).eval()
        cfg = model.config
        with torch.no_grad():
            assert model(torch.randn(1, cfg.in_chans, cfg.image_size, cfg.image_size)).shape == (1, cfg.num_classes)
        assert set(get_preset(name).train) <= options, name  # every training value is a real option
