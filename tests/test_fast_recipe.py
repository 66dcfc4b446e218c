"""The options of the fast CIFAR recipes (airbench's techniques) on real runs: whitening initialisation of
a model's first convolution, alternating flips, Nesterov momentum, Lookahead, multi-crop test-time
augmentation, and the cifar-fast preset end to end.

Data: a folder of 24 training and 12 validation images (three colours, 16 px) and the built-in digits."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import new_trainer, write_colour_splits
from safetensors.torch import load_file
from test_engine_options import TINY as ENGINE_TINY

import vitkit
from vitkit.cli import main
from vitkit.data.builtin import load_digits_dataset
from vitkit.models import create_model
from vitkit.training.resolve import make_config

TINY = dict(ENGINE_TINY, threads=1)  # the engine tests' tiny ViT, in one thread
ONE_STEP = dict(optimizer="sgd", weight_decay=0.0, schedule="constant", epochs=1, batch_size=24)


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return write_colour_splits(tmp_path_factory.mktemp("colours"), train_per_class=8)


def last_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "last" / "model.safetensors"))


def flat(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([weights[k].double().flatten() for k in sorted(weights)])


# ----------------------------------------------------------------------------- whitening


def test_whiten_init_decorrelates_the_training_patches_and_the_filters_stay_fixed(tmp_path):
    options = dict(
        data="digits",
        model="fastnet_cifar",
        model_args={"widths": (8, 16), "whiten_width": 8},
        whiten_init=True,
        train_limit=300,
        epochs=1,
        batch_size=50,
        optimizer="sgd",
        lr=0.5,
        progress=False,
        amp="off",
        threads=1,
    )
    trainer = new_trainer(make_config(**options))
    conv = trainer.model.whiten
    # digits are one channel: 2x2 patches have 4 dimensions, so 4 whitening filters and their negatives
    outputs = F.conv2d(trainer.augment.for_inference(trainer.data.train.images), conv.weight)
    whitened = outputs[:, :4].permute(1, 0, 2, 3).flatten(1)
    covariance = torch.cov(whitened)
    # unit variance, uncorrelated; the last, least varied direction a little under 1 (eigenvalue + eps)
    variances = covariance.diagonal()
    assert torch.allclose(covariance - torch.diag(variances), torch.zeros(4, 4), atol=2e-3), covariance
    assert 0.9 < variances.min() and variances.max() < 1.0001 and torch.all(variances.diff() < 0), variances
    assert torch.equal(conv.weight[4:], -conv.weight[:4])
    filters = conv.weight.detach().clone()

    vitkit.train(out=str(tmp_path / "run"), **options)
    trained = last_weights(tmp_path / "run")
    assert torch.equal(trained["whiten.weight"], filters)  # frozen by the model, whitened by the option
    untrained = create_model("fastnet_cifar", in_chans=1, widths=(8, 16), whiten_width=8).whiten.weight
    assert not torch.allclose(untrained, filters)


def test_first_conv_is_the_stem_and_models_without_one_say_so():
    hybrid = create_model("vit_hybrid_micro_32")
    assert hybrid.first_conv() is hybrid.patch_embed.convs[0]
    hybrid.init_whitening(torch.randn(16, 3, 32, 32))
    spt = create_model("vit_micro_patch4_32", stem="spt")
    assert spt.first_conv() is None
    with pytest.raises(ValueError, match="no convolution on the image's pixels to whiten: drop --whiten-init"):
        spt.init_whitening(torch.randn(4, 3, 32, 32))


# ----------------------------------------------------------------------------- flips


def test_alternate_flips_mirror_each_image_on_every_other_epoch(colours):
    trainer = new_trainer(make_config(data=str(colours), **{**TINY, "hflip": True}, alternate_flips=True))
    everyone = torch.arange(24)
    first = trainer.epoch_flips(0, everyone)
    assert 0 < int(first.sum()) < 24  # a random half in the first epoch
    assert torch.equal(trainer.epoch_flips(1, everyone), ~first)
    assert torch.equal(trainer.epoch_flips(2, everyone), first)

    loader = trainer.train_loader
    images, labels = next(loader.batches(1))
    flips = trainer.epoch_flips(1, loader.batch_indices(1)[0])
    x, _ = trainer.augmented_batch(images, labels, trainer.aug_gen, flips)
    plain = trainer.augment.for_inference(images)
    assert 0 < int(flips.sum()) < len(flips)
    assert torch.allclose(x[flips], plain[flips].flip(-1), atol=1e-5)
    assert torch.allclose(x[~flips], plain[~flips], atol=1e-5)
    with pytest.raises(ValueError, match="--alternate-flips chooses which images --hflip mirrors"):
        make_config(data=str(colours), **TINY, alternate_flips=True)


# ----------------------------------------------------------------------------- the update


@pytest.mark.slow
def test_nesterov_first_step_is_one_plus_momentum_times_the_gradient_step(colours, tmp_path):
    """The first step has momentum buffer g: plain SGD moves -lr*g, Nesterov -lr*(1 + m)*g."""
    runs = {"plain": dict(lr=0.1), "double": dict(lr=0.2), "nesterov": dict(lr=0.1, nesterov=True)}
    for name, options in runs.items():
        vitkit.train(data=str(colours), out=str(tmp_path / name), **{**TINY, **ONE_STEP}, momentum=0.5, **options)
    plain, double, nesterov = (flat(last_weights(tmp_path / name)) for name in runs)
    start = 2 * plain - double
    assert (plain - start).norm() > 1e-4, "precondition: the step moved the weights"
    assert torch.allclose(nesterov - start, 1.5 * (plain - start), atol=1e-6)
    with pytest.raises(ValueError, match="--nesterov needs a positive --momentum"):
        vitkit.train(data=str(colours), out=str(tmp_path / "x"), **{**TINY, **ONE_STEP}, momentum=0.0, nesterov=True)


def test_lookahead_pulls_the_weights_halfway_back_every_n_steps(colours, tmp_path):
    """Four steps of an epoch with --lookahead 4: the weights end halfway between the start and where
    the four plain steps took them."""
    options = {**TINY, "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant", "lr": 0.1}
    model = new_trainer(make_config(data=str(colours), **options)).model
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    vitkit.train(data=str(colours), out=str(tmp_path / "plain"), epochs=1, **options)
    vitkit.train(data=str(colours), out=str(tmp_path / "lookahead"), epochs=1, lookahead=4, **options)
    plain, pulled = last_weights(tmp_path / "plain"), last_weights(tmp_path / "lookahead")
    assert (flat(plain) - flat(start)).norm() > 1e-3, "precondition: the steps moved the weights"
    for key in plain:
        assert torch.allclose(pulled[key], (start[key] + plain[key]) / 2, atol=1e-6), key


def test_norm_lr_scale_multiplies_the_step_of_the_normalisation_parameters_only(colours):
    """One plain SGD step from the same weights on the same batch: the LayerNorms move 64 times as far
    with --norm-lr-scale 64, every other parameter exactly as far."""
    options = {**TINY, "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant", "lr": 0.1}
    moves = {}
    for scale in (1.0, 64.0):
        trainer = new_trainer(make_config(data=str(colours), **options, norm_lr_scale=scale))
        start = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        images, labels = next(trainer.train_loader.batches(1))
        x, targets = trainer.augmented_batch(images, labels, torch.Generator().manual_seed(0))
        trainer.set_lr()
        trainer.model_step(trainer.model, x, targets)
        moves[scale] = {k: v.detach() - start[k] for k, v in trainer.model.named_parameters()}
    norms = trainer.model.norm_parameters()
    assert norms and norms < set(moves[1.0]) and all("norm" in name for name in norms), norms
    for name, move in moves[1.0].items():
        expected = 64 * move if name in norms else move
        assert torch.allclose(moves[64.0][name], expected, rtol=1e-3, atol=2e-5), name  # 64x a float32 rounding
    assert max(float(moves[1.0][name].abs().max()) for name in norms) > 1e-4, "precondition: the norms moved"


@pytest.mark.slow
def test_a_resumed_run_keeps_the_lookahead_slow_weights(colours, tmp_path):
    """Lookahead every 3 of an epoch's 4 steps straddles the epoch end: a run resumed there (at a constant
    rate, which a longer run does not re-plan) ends with the weights of the uninterrupted one only if the
    slow copy was saved and put back."""
    options = {**TINY, "optimizer": "sgd", "lr": 0.1, "schedule": "constant", "lookahead": 3, "batch_size": 6}
    vitkit.train(data=str(colours), out=str(tmp_path / "whole"), epochs=2, **options)
    vitkit.train(data=str(colours), out=str(tmp_path / "parts"), epochs=1, **options)
    vitkit.train(resume=tmp_path / "parts", epochs=2)
    whole, parts = last_weights(tmp_path / "whole"), last_weights(tmp_path / "parts")
    assert all(torch.equal(whole[k], parts[k]) for k in whole)


# ----------------------------------------------------------------------------- evaluation


@pytest.mark.slow
def test_crop_tta_weighs_the_image_and_two_one_pixel_shifts(digits_run, capsys):
    run, _ = digits_run
    clf = vitkit.load(run, precision="fp32", backend="torch")  # the raw logits (an ONNX graph is calibrated)
    test = load_digits_dataset(seed=0).test
    with torch.no_grad():
        x = clf.input_transform.for_inference(test.images)
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        size = x.shape[-1]
        views = (x, padded[..., :size, :size], padded[..., 2:, 2:])

        def logits(view):
            return (clf.model(view) + clf.model(view.flip(-1))) / 2

        expected = 0.5 * logits(views[0]) + 0.25 * logits(views[1]) + 0.25 * logits(views[2])
    loss, flip_loss = (float(F.cross_entropy(z, test.labels)) for z in (expected, logits(views[0])))
    both = vitkit.evaluate(run, flip_tta=True, crop_tta=True)
    assert both["crop_tta"] and both["count"] == len(test)
    assert abs(both["loss"] - loss) < 1e-4 and abs(loss - flip_loss) > 1e-3  # the shifted views count
    assert both["top1"] == float((expected.argmax(1) == test.labels).double().mean())
    assert main(["eval", str(run), "--flip-tta", "--crop-tta"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"digits [test, flip + crop TTA] {len(test)} images, fp32"


# ----------------------------------------------------------------------------- the recipe


@pytest.mark.slow
def test_cifar_fast_preset_trains_end_to_end(colours, tmp_path):
    result = vitkit.train(
        preset="cifar-fast",
        data=str(colours),
        out=str(tmp_path / "run"),
        model_args={"widths": (8, 16)},
        epochs=2,
        batch_size=6,
        progress=False,
        threads=1,
    )
    # its widths changed by --model-arg: named as the preset with what was changed
    assert result["model"] == "cifar-fast with widths=(8, 16)" and result["epochs_run"] == 2
    assert result["architecture"].startswith("FastNet: 2x2 whitening convolution (24 filters)")
    saved = (tmp_path / "run" / "args.yaml").read_text()
    for line in (
        "nesterov: true",
        "lookahead_ema: 0.95",
        "schedule: triangle",
        "crop_padding_mode: reflect",
        "alternate_flips: true",
        "whiten_init: true",
        "  whiten.bias: 3",
        "norm_bias_decay: true",
    ):
        assert line in saved
