"""`vitkit lr-find`: an exponential learning-rate sweep on a fresh model that stops when the loss
diverges, plots loss against rate, suggests a rate inside the swept range, and leaves nothing behind
(no run folder, the caller's random state untouched)."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from vitkit.cli import main
from vitkit.training.lr_find import DIVERGED, suggest

TINY = dict(
    train_limit=320, batch_size=32, model_args={"depth": 1, "embed_dim": 32, "mlp_dim": 64}, amp="off", threads=1
)


def assert_real_plot(path) -> None:
    image = Image.open(path)
    assert image.format == "PNG" and np.asarray(image.convert("L"), dtype=float).std() > 10


def test_lr_find_sweeps_until_the_loss_diverges_and_leaves_no_trace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng_before = torch.get_rng_state()
    result = vitkit.lr_find(steps=60, start_lr=1e-4, end_lr=1000, plot="sweep.png", **TINY)
    lrs, losses, smoothed = result["lrs"], result["losses"], result["smoothed"]

    ratio = (1000 / 1e-4) ** (1 / 59)  # exponential: a constant factor per step from start_lr
    assert lrs == pytest.approx([1e-4 * ratio**i for i in range(len(lrs))], rel=1e-9)
    # stopped by the divergence rule, long before the end of the sweep, with every loss finite
    assert result["diverged"] and len(lrs) < 60 and all(math.isfinite(x) for x in losses)
    assert smoothed[-1] > DIVERGED * min(smoothed) and all(s <= DIVERGED * min(smoothed[:-1]) for s in smoothed[:-1])
    assert result["min_loss_lr"] == lrs[int(np.argmin(smoothed))]
    # this tiny model's loss barely moves before it diverges (under 5%): no rate is read from such a curve
    assert (smoothed[0] - min(smoothed)) / smoothed[0] < 0.05
    assert result["suggested_lr"] is None and "fell only" in result["warning"]

    assert_real_plot(tmp_path / "sweep.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.png"]  # no run folder, no checkpoint
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_the_command_takes_train_s_data_and_model_flags_and_prints_the_suggestion(tmp_path, capsys):
    plot = tmp_path / "lr.png"
    args = ["lr-find", "--steps", "4", "--train-limit", "320", "--batch-size", "32", "--model-arg", "depth=1"]
    assert main([*args, "--amp", "off", "--threads", "1", "--plot", str(plot)]) == 0
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert printed["method"] == "steepest descent of the smoothed loss" and printed["plot"] == str(plot)
    assert printed["steps"] == 4
    # it says what it is doing while it works: preparing, the sweep, then every tenth of the steps
    progress = [line for line in err.splitlines() if line.startswith("vitkit lr-find: ") and "warning" not in line]
    assert progress[0].startswith("vitkit lr-find: preparing ") and "sweeping the learning rate" in progress[1]
    assert [line.split(":")[1] for line in progress[2:]] == [" step 1/4", " step 2/4", " step 3/4", " step 4/4"]
    # four steps over eight decades show no descent to read: no rate, and a warning saying why
    assert printed["suggested_lr"] is None and printed["warning"] in err and "vitkit lr-find: warning:" in err
    assert_real_plot(plot)
    with pytest.raises(SystemExit):  # run-folder and schedule flags mean nothing to a sweep
        main(["lr-find", "--epochs", "3"])
    assert "unrecognized arguments: --epochs" in capsys.readouterr().err


def test_the_suggestion_is_the_steepest_fall_of_the_loss():
    lrs = [10.0**e for e in range(-6, 1)]
    smoothed = [2.3, 2.29, 2.28, 1.6, 1.55, 1.5, 3.0]  # falls fastest around 1e-3
    assert suggest(lrs, smoothed) == (1e-3, None)


def test_a_flat_or_rising_curve_suggests_nothing_and_says_why():
    """A short sweep's flat, then diverged curve once suggested a rate 1000x below the recipe's."""
    lrs = [10.0**e for e in range(-6, 1)]
    rate, warning = suggest(lrs, [2.30, 2.31, 2.29, 2.30, 2.28, 2.31, 9.0])
    assert rate is None and "fell only 0.9%" in warning and "--steps" in warning
    rate, warning = suggest(lrs, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert rate is None and "lowest at the sweep's start" in warning
