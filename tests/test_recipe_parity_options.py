"""The engine options that bring cifar-fast to airbench94's method, each on its own: the triangular
schedule, the Lookahead of the whole model state (an EMA with a late start and a ramped decay),
freezing a parameter after some epochs, weight decay on norms and biases at the weights' per-step
strength, translations with reflected edges, whitening from a seeded sample of the whole split, and
FastNet's BatchNorm epsilon.

Data: a folder of 24 training and 12 validation images in three colour classes (16 px), stored in
class order, as folders are."""

import csv
import itertools
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import new_trainer, run_vitkit, write_colour_splits
from test_engine_options import TINY
from test_fast_recipe import last_weights

import vitkit
from vitkit.data.augment import AugmentSpec, BatchAugment
from vitkit.models import create_model
from vitkit.models.base import ImageClassifier
from vitkit.training import build
from vitkit.training.optim import LookaheadEMA
from vitkit.training.resolve import make_config
from vitkit.training.schedule import lr_factor

SGD = dict(TINY, optimizer="sgd", momentum=0.0, weight_decay=0.0, schedule="constant", lr=0.1)
FASTNET = dict(model="fastnet_cifar", model_args={"widths": (8, 16), "whiten_width": 12}, image_size=16)


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return write_colour_splits(tmp_path_factory.mktemp("colours"), train_per_class=8)


# ----------------------------------------------------------------------------- the schedule


def test_triangle_schedule_is_airbenchs_piecewise_line():
    """0.2 at the first step, 1 at 23% of the steps, 0.07 at the last; straight lines between."""
    total, peak = 100, 23

    def factor(step, steps=total):
        return lr_factor(step, steps, 0, "triangle", 0.07, start_ratio=0.2, peak_at=0.23)

    assert factor(0) == pytest.approx(0.2)
    assert factor(10) == pytest.approx(0.2 + 0.8 * 10 / peak)
    assert factor(peak) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(1 - 0.93 * (60 - peak) / (total - peak))
    assert factor(total) == pytest.approx(0.07)
    # a time budget not yet fitted: the schedule waits at its start, not at its peak
    assert factor(5, None) == 0.2


@pytest.mark.slow  # several training runs
def test_triangle_schedule_drives_the_run_and_refuses_a_second_warmup(colours, tmp_path):
    """4 epochs of 4 steps, peak at int(0.5 * 16) = 8: metrics.csv logs the rate of each epoch's last step."""
    options = dict(SGD, schedule="triangle", triangle_start=0.25, triangle_peak=0.5, min_lr_ratio=0.1, epochs=4)
    vitkit.train(data=str(colours), out=str(tmp_path / "run"), **options)
    with open(tmp_path / "run" / "metrics.csv") as f:
        rates = [float(row["lr"]) for row in csv.DictReader(f)]
    expected = [0.25 + 0.75 * 3 / 8, 0.25 + 0.75 * 7 / 8, 1 - 0.9 * 3 / 8, 1 - 0.9 * 7 / 8]
    assert rates == pytest.approx([0.1 * e for e in expected], rel=1e-9)
    with pytest.raises(ValueError, match="--schedule triangle has its own warmup"):
        make_config(data=str(colours), **{**options, "warmup_epochs": 1})


# ----------------------------------------------------------------------------- Lookahead of the whole state


def float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def test_lookahead_ema_averages_weights_and_batchnorm_statistics_with_a_ramped_decay():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    average = LookaheadEMA(model, decay=0.9, every=2, start_step=2, ramp=3)

    def train_step():  # moves the weights and, through the forward pass, the BatchNorm statistics
        model(torch.randn(8, 3) * 3 + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))

    for step in (1, 2, 3):  # up to the start, and an odd step after it: nothing
        train_step()
        average.after_step(step, 10)
        assert average.average is None
    train_step()
    moved = float_state(model)
    average.after_step(4, 10)  # the first update copies the model, which stays where it is
    assert all(torch.equal(model.state_dict()[k], v) for k, v in moved.items())
    first = float_state(model)
    train_step()
    average.after_step(5, 10)
    train_step()
    fast = float_state(model)
    average.after_step(6, 10)
    decay = 0.9**2 * 0.6**3
    for key, value in float_state(model).items():
        expected = decay * first[key] + (1 - decay) * fast[key]
        assert torch.allclose(value, expected, atol=1e-6), key  # the model continues from the average
    assert {"1.running_mean", "1.running_var"} <= set(first)
    assert not torch.equal(first["1.running_mean"], fast["1.running_mean"]), "precondition: statistics moved"
    averaged = float_state(model)
    train_step()
    average.end_epoch()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in averaged.items())

    restored = LookaheadEMA(model, decay=0.9, every=2, start_step=2, ramp=3)
    restored.load_state_dict(average.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(restored.average, average.average))


@pytest.mark.slow  # several training runs
def test_lookahead_ema_in_a_run_ends_at_the_average_of_its_updates(colours, tmp_path):
    """2 steps per epoch, an update every 2 steps from the start with decay 0.5 per step: the first
    update (step 2) copies w2, the second (step 4) leaves 0.5^2 * w2 + (1 - 0.5^2) * w4 in the model."""
    options = dict(SGD, batch_size=12)
    vitkit.train(data=str(colours), out=str(tmp_path / "w2"), epochs=1, **options)
    vitkit.train(data=str(colours), out=str(tmp_path / "w4"), epochs=2, **options)
    average = dict(lookahead_ema=0.5, lookahead_ema_every=2, lookahead_ema_ramp=1)
    vitkit.train(data=str(colours), out=str(tmp_path / "ema"), epochs=2, **options, **average)
    w2, w4, ema = (last_weights(tmp_path / name) for name in ("w2", "w4", "ema"))
    assert any(not torch.allclose(w2[k], w4[k]) for k in w2), "precondition: the steps moved the weights"
    for key in ema:
        assert torch.allclose(ema[key], 0.25 * w2[key] + 0.75 * w4[key], atol=1e-6), key


@pytest.mark.slow
def test_a_resumed_run_keeps_the_lookahead_ema_average(colours, tmp_path):
    """Updates every 3 of an epoch's 4 steps straddle the epoch end: a run resumed there ends with the
    uninterrupted run's weights only if the average was saved and put back."""
    options = dict(SGD, lookahead_ema=0.8, lookahead_ema_every=3)
    vitkit.train(data=str(colours), out=str(tmp_path / "whole"), epochs=2, **options)
    vitkit.train(data=str(colours), out=str(tmp_path / "parts"), epochs=1, **options)
    vitkit.train(resume=tmp_path / "parts", epochs=2)
    whole, parts = last_weights(tmp_path / "whole"), last_weights(tmp_path / "parts")
    assert all(torch.equal(whole[k], parts[k]) for k in whole)


# ----------------------------------------------------------------------------- freezing after N epochs


def test_freeze_after_stops_a_module_training_after_its_epochs(colours, tmp_path):
    """With momentum and weight decay, which would move it without a gradient of its own: the head frozen
    after epoch 1 ends epoch 2 where epoch 1 left it, while the rest trains on."""
    options = dict(SGD, momentum=0.9, weight_decay=0.05, freeze_after={"head": 1})
    vitkit.train(data=str(colours), out=str(tmp_path / "one"), epochs=1, **options)
    vitkit.train(data=str(colours), out=str(tmp_path / "two"), epochs=2, **options)
    one, two = last_weights(tmp_path / "one"), last_weights(tmp_path / "two")
    assert {"head.weight", "head.bias"} <= set(one)
    for key in one:
        assert torch.equal(one[key], two[key]) == key.startswith("head."), key
    with pytest.raises(ValueError, match=r"--freeze-after neck=1: the model has no parameter or module of that name"):
        new_trainer(make_config(data=str(colours), **{**options, "freeze_after": {"neck": 1}}))
    with pytest.raises(ValueError, match=r"--freeze-after head=-1: give the epochs as a whole number"):
        make_config(data=str(colours), **{**options, "freeze_after": {"head": -1}})
    # from the command line: repeated KEY=VALUE flags, each checked against the model
    freeze = ["--freeze-after", "head=1", "--freeze-after", "neck=2"]
    cli = run_vitkit("train", "--data", str(colours), *freeze, "--batch-size", "6", "--out", str(tmp_path / "cli"))
    assert cli.returncode == 2 and "--freeze-after neck=2: the model has no parameter" in cli.stderr, cli.stderr


# ----------------------------------------------------------------------------- decay of norms and biases


@pytest.mark.parametrize("norm_bias_decay", [False, True])
def test_norm_bias_decay_decays_every_parameter_alike_whatever_its_rate(colours, norm_bias_decay):
    """A step with zero gradients is weight decay alone: with --norm-bias-decay every trained parameter
    (the BatchNorm shifts at 64 times the rate included) shrinks by the same factor 1 - lr * decay, as in
    airbench; without it the 1-D ones stay."""
    options = dict(SGD, **FASTNET, weight_decay=0.01, norm_lr_scale=64, norm_bias_decay=norm_bias_decay)
    trainer = new_trainer(make_config(data=str(colours), **options))
    trained = {k: p for k, p in trainer.model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in trained.values():
            p.copy_(torch.rand_like(p) + 0.5)
            p.grad = torch.zeros_like(p)
    start = {k: p.detach().clone() for k, p in trained.items()}
    trainer.set_lr()
    trainer.optimizer.step()
    assert any(".bias" in k and p.ndim == 1 for k, p in trained.items())
    for key, p in trained.items():
        shrinks = norm_bias_decay or p.ndim > 1
        assert torch.allclose(p, start[key] * (1 - 0.1 * 0.01) if shrinks else start[key], rtol=1e-6), key


# ----------------------------------------------------------------------------- translations


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_translations_are_crops_of_the_zero_or_reflect_padded_image(mode):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8, generator=gen)
    spec = AugmentSpec(crop_padding=2, crop_padding_mode=mode)
    out = BatchAugment(8, (0.0,) * 3, (1.0,) * 3, 3, spec).for_training(images, gen)
    padded = F.pad(images.float() / 255, (2,) * 4, mode="constant" if mode == "zeros" else "reflect")
    shifts = set()
    for i in range(len(images)):
        found = [
            (dy, dx)
            for dy, dx in itertools.product(range(5), repeat=2)
            if torch.allclose(out[i], padded[i, :, dy : dy + 8, dx : dx + 8], atol=1e-5)
        ]
        assert found, f"image {i} is no crop of the {mode}-padded image"
        shifts.add(found[0])
    assert len(shifts) > 5  # a spread of shifts, edges included
    with pytest.raises(ValueError, match="--crop-padding 8 with reflect padding must be smaller than the 8 px image"):
        too_far = AugmentSpec(crop_padding=8, crop_padding_mode="reflect")
        BatchAugment(8, (0.0,) * 3, (1.0,) * 3, 3, too_far).for_training(images, gen)


# ----------------------------------------------------------------------------- whitening


def test_whitening_sees_a_seeded_sample_of_the_whole_split(colours, monkeypatch):
    """A folder's training split is in class order: whitening from 8 of its 24 images must not take the
    first class's 8, and the same seed takes the same images."""
    monkeypatch.setattr(build, "WHITENING_IMAGES", 8)
    seen = []
    original = ImageClassifier.init_whitening

    def recording(model, images):
        seen.append(images.clone())
        original(model, images)

    monkeypatch.setattr(ImageClassifier, "init_whitening", recording)
    samples = []
    for seed in (0, 0, 1):
        trainer = new_trainer(make_config(data=str(colours), **{**SGD, **FASTNET}, whiten_init=True, seed=seed))
        train = trainer.data.train
        everyone = trainer.augment.for_inference(train.images)
        # each whitened image is one of the split's: which ones
        index = [int(((everyone - image).abs().flatten(1).amax(1) < 1e-6).nonzero()[0]) for image in seen[-1]]
        samples.append(index)
        assert len(index) == 8 and len(set(train.labels[index].tolist())) > 1, train.labels[index]
    assert train.labels.diff().ge(0).all(), "precondition: the split is in class order"
    assert samples[0] == samples[1] and samples[0] != samples[2]


def test_fastnet_batchnorm_epsilon_is_a_model_argument():
    model = create_model("fastnet_cifar", widths=(8,), bn_eps=1e-12)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-12 for m in norms)
    assert make_config(data="digits", preset="cifar-fast").model_args["bn_eps"] == 1e-12
