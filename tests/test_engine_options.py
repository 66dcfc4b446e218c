"""What the training options do, read from the run folder (metrics.csv, best/, last/, results.json):
learning-rate schedules and warmup, plateau, early stopping, the monitored metric, EMA, gradient
accumulation and clipping, torch.compile and the normalisation modes.

The data is a folder of 24 training and 12 validation images (three colours), so every step count is
known: batch 6 is 4 steps per epoch, batch 24 is one. Tests that compare several runs are marked slow."""

import csv
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import new_trainer, run_vitkit, subprocess_env, write_colour_splits
from PIL import Image
from safetensors.torch import load_file

import vitkit

TRAIN_IMAGES = 24
TINY = dict(
    image_size=16,
    model="vit_micro_patch4_32",
    model_args={"depth": 1, "embed_dim": 32, "num_heads": 2, "mlp_dim": 64},
    hflip=False,
    rrc_scale=0.0,
    warmup_epochs=0,
    amp="off",
    batch_size=6,
    progress=False,
    plots=False,  # the figures are tested in test_run_report.py
)


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return write_colour_splits(tmp_path_factory.mktemp("colours"), train_per_class=TRAIN_IMAGES // 3)


def train(colours: Path, out: Path, **options) -> tuple[dict, list[dict]]:
    """Train on the colour folder; returns results.json's content and metrics.csv as numbers."""
    result = vitkit.train(data=str(colours), out=str(out), **{**TINY, **options})
    with open(out / "metrics.csv") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return result, rows


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def lrs(rows):
    return [row["lr"] for row in rows]


# ----------------------------------------------------------------------------- schedules


def expected_factor(schedule: str, step: int, total: int, min_ratio: float = 0.01) -> float:
    """The schedules' definitions (no warmup): constant, linear to zero (Hugging Face), cosine to a floor."""
    progress = step / total
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - progress
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedules_follow_their_definition_step_by_step(colours, tmp_path, schedule):
    lr, epochs, steps = 2e-3, 4, 4  # metrics.csv logs the rate of each epoch's last step
    _, rows = train(colours, tmp_path / "run", schedule=schedule, lr=lr, epochs=epochs)
    expected = [lr * expected_factor(schedule, steps * e - 1, steps * epochs) for e in range(1, epochs + 1)]
    assert lrs(rows) == pytest.approx(expected, rel=1e-9)


def test_warmup_ramps_linearly_then_holds(colours, tmp_path):
    lr = 1e-3
    _, rows = train(colours, tmp_path / "run", schedule="constant", lr=lr, warmup_epochs=2, epochs=3)
    assert lrs(rows) == pytest.approx([lr / 2, lr, lr], rel=1e-9)  # step 4 of 8, step 8 of 8, then constant


@pytest.mark.slow  # several training runs
def test_plateau_halves_the_rate_only_when_the_metric_stalls(colours, tmp_path):
    plateau = dict(schedule="plateau", plateau_patience=1, plateau_factor=0.5, monitor="val_loss", epochs=4)
    # a rate so small that the validation loss cannot improve by the 1e-4 the monitor needs
    _, stalled = train(colours, tmp_path / "stalled", lr=1e-7, **plateau)
    assert lrs(stalled) == pytest.approx([1e-7, 1e-7, 0.5e-7, 0.25e-7], rel=1e-9)
    # a rate that learns: the loss improves every epoch, so the rate stays
    _, learning = train(colours, tmp_path / "learning", lr=3e-3, **plateau)
    losses = [row["val_loss"] for row in learning]
    assert all(b < a - 1e-4 for a, b in zip(losses, losses[1:])), losses
    assert lrs(learning) == pytest.approx([3e-3] * 4, rel=1e-9)


# ----------------------------------------------------------------------------- best checkpoint


@pytest.mark.slow  # several training runs
def test_early_stopping_stops_and_keeps_the_best_weights(colours, tmp_path):
    """val_top1 cannot move at a negligible rate: the first epoch stays best, the run stops after
    `early_stopping` more, and best/ holds the first epoch's weights."""
    options = dict(schedule="constant", lr=1e-7)
    result, rows = train(colours, tmp_path / "stopped", epochs=20, early_stopping=2, **options)
    assert len(rows) == 3 and result["epochs_run"] == 3 and result["best_epoch"] == 1
    assert result["stopped_by"] == "early_stopping"
    train(colours, tmp_path / "one", epochs=1, **options)
    best, first_epoch = weights(tmp_path / "stopped" / "best"), weights(tmp_path / "one" / "last")
    assert all(torch.equal(best[k], first_epoch[k]) for k in best)
    last = weights(tmp_path / "stopped" / "last")
    assert any(not torch.equal(best[k], last[k]) for k in best)
    assert vitkit.evaluate(tmp_path / "stopped" / "best", split="val")["top1"] == result["metrics"]["top1"]


def test_monitor_val_loss_picks_the_lowest_loss_epoch(colours, tmp_path):
    """The colours are separated after an epoch or two while the loss keeps falling, so the two
    monitors disagree: best/ must follow the loss."""
    result, rows = train(colours, tmp_path / "run", monitor="val_loss", schedule="constant", lr=3e-3, epochs=5)
    losses = [row["val_loss"] for row in rows]
    first_top_accuracy = 1 + [row["val_top1"] for row in rows].index(max(row["val_top1"] for row in rows))
    best = 1 + losses.index(min(losses))
    assert first_top_accuracy < best, "precondition: val_top1 would have chosen another epoch"
    assert result["best_epoch"] == best and result["monitor"] == "val_loss"
    reevaluated = vitkit.evaluate(tmp_path / "run" / "best", split="val")
    assert reevaluated["loss"] == pytest.approx(losses[best - 1], rel=1e-5)


@pytest.mark.slow  # several training runs
def test_ema_checkpoint_is_the_average_of_the_weights(colours, tmp_path):
    """One step per epoch: after two steps the EMA with decay d is d * w1 + (1 - d) * w2, and best/
    holds it while last/ holds the raw weights w2."""
    options = dict(schedule="constant", lr=3e-3, batch_size=TRAIN_IMAGES, monitor="val_loss")
    train(colours, tmp_path / "w1", epochs=1, **options)
    result, _ = train(colours, tmp_path / "ema", epochs=2, ema=0.75, **options)
    assert result["best_epoch"] == 2, "precondition: the averaged model improved in epoch 2"
    w1, w2 = weights(tmp_path / "w1" / "last"), weights(tmp_path / "ema" / "last")
    best = weights(tmp_path / "ema" / "best")
    assert any(not torch.allclose(w1[k], w2[k]) for k in w1)
    for key in best:
        assert torch.allclose(best[key], 0.75 * w1[key] + 0.25 * w2[key], atol=1e-6), key


# ----------------------------------------------------------------------------- the update


@pytest.mark.slow  # several training runs
def test_accumulating_two_half_batches_is_one_whole_batch_step(colours, tmp_path):
    sgd = dict(optimizer="sgd", lr=0.1, schedule="constant", epochs=1)
    train(colours, tmp_path / "whole", batch_size=12, **sgd)
    train(colours, tmp_path / "accumulated", batch_size=6, accum_steps=2, **sgd)
    train(colours, tmp_path / "plain", batch_size=6, **sgd)
    whole, accumulated = weights(tmp_path / "whole" / "last"), weights(tmp_path / "accumulated" / "last")
    for key in whole:
        assert torch.allclose(whole[key], accumulated[key], atol=1e-6), key
    plain = weights(tmp_path / "plain" / "last")  # four small steps are not the same update
    assert any(not torch.allclose(whole[k], plain[k], atol=1e-4) for k in whole)


def flat(w: dict) -> torch.Tensor:
    return torch.cat([w[k].double().flatten() for k in sorted(w)])


@pytest.mark.slow  # several training runs
def test_gradient_clipping_caps_the_step_at_the_norm(colours, tmp_path):
    """Plain SGD, one step: the update is -lr * g scaled to norm `grad_clip` when g is longer."""
    step = dict(optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=1.0, schedule="constant", epochs=1)
    step["batch_size"] = TRAIN_IMAGES
    clip = 0.01
    for name, value in (("clip", clip), ("clip2", 2 * clip), ("free", 0.0)):
        train(colours, tmp_path / name, grad_clip=value, **step)
    w_clip, w_clip2, w_free = (flat(weights(tmp_path / n / "last")) for n in ("clip", "clip2", "free"))
    start = 2 * w_clip - w_clip2  # both moved along the same direction, by clip and by 2 * clip
    update = w_clip - start
    assert update.norm().item() == pytest.approx(clip, rel=1e-3)
    free_update = w_free - start
    assert free_update.norm() > 2 * clip, "precondition: the gradient is longer than the clip norm"
    assert torch.nn.functional.cosine_similarity(update, free_update, dim=0) > 0.999  # same direction


@pytest.mark.slow
def test_compile_trains_the_same_model(colours, tmp_path):
    """--compile goes through TorchInductor (its kernels land in the cache folder) and gives the eager
    run's weights."""
    sgd = ["--optimizer", "sgd", "--lr", "0.1", "--schedule", "constant", "--epochs", "1", "--batch-size", "12"]
    common = [
        "train", "--data", str(colours), "--image-size", "16", "--model", "vit_micro_patch4_32",
        "--model-arg", "depth=1", "--model-arg", "embed_dim=32", "--model-arg", "num_heads=2",
        "--model-arg", "mlp_dim=64", "--no-hflip", "--rrc-scale", "0", "--amp", "off", "--no-progress", "--no-plots",
        *sgd,
    ]  # fmt: skip
    env = subprocess_env()
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor")
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        proc = run_vitkit(*common, "--out", str(tmp_path / name), *extra, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        kernels = [p for p in (tmp_path / "inductor").rglob("*") if p.is_file()]
        assert bool(kernels) == (name == "compiled"), kernels[:5]
    eager, compiled = weights(tmp_path / "eager" / "last"), weights(tmp_path / "compiled" / "last")
    for key in eager:
        assert torch.allclose(eager[key], compiled[key], atol=1e-4), key


@pytest.mark.slow
def test_channels_last_feeds_nhwc_batches_and_trains_the_same_weights(colours, tmp_path):
    """--channels-last (the default) hands the model NHWC batches; the weights after an epoch are the
    NCHW run's up to float rounding, and the checkpoint's tensors are ordinary contiguous ones."""
    from vitkit.training.resolve import make_config

    conv_stem = dict(TINY["model_args"], stem="conv", conv_layers=1, stem_width=8)
    layouts = []
    for flag in (True, False):
        options = {**TINY, "model_args": conv_stem, "channels_last": flag}
        trainer = new_trainer(make_config(data=str(colours), **options))
        hook = trainer.model.patch_embed.register_forward_pre_hook(
            lambda _, inputs: layouts.append(inputs[0].is_contiguous(memory_format=torch.channels_last))
        )
        images, labels = next(trainer.train_loader.batches(0))
        trainer.train_step(trainer.model, images, labels)
        hook.remove()
    assert layouts == [True, False]
    sgd = dict(optimizer="sgd", lr=0.1, schedule="constant", epochs=1, model_args=conv_stem)
    train(colours, tmp_path / "nhwc", channels_last=True, **sgd)
    train(colours, tmp_path / "nchw", channels_last=False, **sgd)
    nhwc, nchw = weights(tmp_path / "nhwc" / "last"), weights(tmp_path / "nchw" / "last")
    for key in nchw:
        assert nhwc[key].is_contiguous() and torch.allclose(nhwc[key], nchw[key], atol=1e-5), key


# ----------------------------------------------------------------------------- normalisation


def pixel_statistics(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.concatenate(
        [np.asarray(Image.open(p).convert("RGB"), dtype=np.float64).reshape(-1, 3) / 255 for p in folder.rglob("*.jpg")]
    )
    return pixels.mean(0), pixels.std(0)


@pytest.mark.parametrize("mode", ["fit", "imagenet", "half", "none"])
def test_normalize_modes(colours, tmp_path, mode):
    """Each mode's statistics are recorded in the checkpoint, and they are the ones training used: the
    checkpoint re-evaluated with them reproduces the logged validation loss."""
    result, rows = train(colours, tmp_path / "run", normalize=mode, epochs=1)
    pre = vitkit.load(tmp_path / "run", backend="torch").meta["preprocessing"]
    expected = {
        "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        "half": ([0.5] * 3, [0.5] * 3),
        "none": ([0.0] * 3, [1.0] * 3),
    }
    if mode == "fit":
        mean, std = pixel_statistics(colours / "train")
        assert pre["mean"] == pytest.approx(mean.tolist(), abs=0.01)
        assert pre["std"] == pytest.approx(std.tolist(), abs=0.01)
    else:
        assert (pre["mean"], pre["std"]) == expected[mode]
    reevaluated = vitkit.evaluate(tmp_path / "run", split="val")
    assert reevaluated["loss"] == pytest.approx(rows[result["best_epoch"] - 1]["val_loss"], rel=1e-5)
    assert os.path.isfile(tmp_path / "run" / "args.yaml")
    assert f"normalize: {mode}" in (tmp_path / "run" / "args.yaml").read_text()


# ----------------------------------------------------------------------------- interruption


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped one, on purpose
def test_an_interrupt_dropped_in_a_finalizer_still_ends_the_run(colours, tmp_path):
    """Ctrl-C's KeyboardInterrupt can land inside an object's __del__, where Python prints and drops it:
    the run must stop anyway (at its next step), recorded as interrupted, not train on to the end."""
    import json
    import signal

    from vitkit.training import _raise_interrupt

    class RaisesInItsFinalizer:
        def __del__(self):
            _raise_interrupt(signal.SIGINT, None)  # what the handler does when the signal lands here

    class DropAnInterruptAfterTheFirstEpoch:
        def on_epoch_end(self, epoch, metrics):
            if epoch == 1:
                RaisesInItsFinalizer()  # collected at once: its KeyboardInterrupt is dropped

    with pytest.raises(KeyboardInterrupt):
        vitkit.train(
            data=str(colours),
            out=str(tmp_path / "run"),
            epochs=3,
            callbacks=[DropAnInterruptAfterTheFirstEpoch()],
            **TINY,
        )
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (status["status"], status["error"]) == ("failed", "interrupted")
    assert len(list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))) == 1
