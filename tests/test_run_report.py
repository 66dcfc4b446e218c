"""The run folder's records and figures: args.yaml and run.json say what ran, the curves show what the
data allows (no top-5 with 5 classes or fewer) and the learning rate, the confusion matrix's class
names clear its colour bars, patches.png only for models that cut patches, and train_batch.png shows
a training batch as the model receives it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import MODEL_FAMILIES, write_class_folders
from PIL import Image

import vitkit
from vitkit.data.augment import BatchAugment
from vitkit.data.splits import Split
from vitkit.models import create_model
from vitkit.training.resolve import saved_config
from vitkit.viz import plots
from vitkit.viz.report import write_report

HISTORY = [
    {
        "epoch": e,
        "train_loss": 2.0 / e,
        "val_loss": 2.2 / e,
        "train_top1": 0.3 * e,
        "val_top1": 0.25 * e,
        "train_top5": 0.9,
        "val_top5": 0.85,
        "lr": 1e-3 * (4 - e) / 3,
    }
    for e in (1, 2, 3)
]


def assert_real_plot(path: Path) -> None:
    img = Image.open(path)
    assert img.format == "PNG" and min(img.size) >= 200
    assert np.asarray(img.convert("L"), dtype=np.float64).std() > 10, f"{path.name} looks blank"


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions would save, by file name, open for inspection."""
    import matplotlib.pyplot as plt

    captured = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path, **_: captured.__setitem__(Path(path).name, fig))
    yield captured
    for fig in captured.values():
        plt.close(fig)


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    data = write_class_folders(tmp_path_factory.mktemp("colours"), per_class=8, size=16)
    out = tmp_path_factory.mktemp("runs") / "run"
    result = vitkit.train(
        data=str(data),
        out=str(out),
        epochs=2,
        image_size=16,
        model="vit_micro_patch4_32",
        model_args={"depth": 1, "embed_dim": 32, "num_heads": 2, "mlp_dim": 64},
        batch_size=6,
        progress=False,
        quiet=True,
        threads=1,
    )
    return out, result


def test_a_run_records_the_epochs_it_ran_beside_the_request(colour_run):
    out, result = colour_run
    status = json.loads((out / "run.json").read_text())
    assert (
        status["epochs_run"] == result["epochs_run"] == 2 and status["stopped_by"] == result["stopped_by"] == "epochs"
    )
    args = (out / "args.yaml").read_text()
    assert args.startswith("# As requested. The run trained 2 epoch(s), stopped by reaching --epochs;")
    assert saved_config(out).epochs == 2 and yaml.safe_load(args)["epochs"] == 2  # still a loadable config


def test_a_run_shows_a_training_batch_and_its_patches(colour_run):
    out, _ = colour_run
    for name in ("train_batch.png", "patches.png", "curves.png", "confusion_matrix.png", "predictions.png"):
        assert_real_plot(out / name)


def test_de_normalising_gives_back_the_pixels():
    augment = BatchAugment(16, mean=(0.2, 0.3, 0.4), std=(0.5, 0.6, 0.7), channels=3)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert (augment.to_uint8(augment.for_inference(images)).int() - images.int()).abs().max() <= 1


def test_curves_show_top5_only_beyond_five_classes_and_the_learning_rate(figures):
    plots.plot_curves(HISTORY, 5, "five.png")
    plots.plot_curves(HISTORY, 10, "ten.png")
    lr_title = "learning rate (end of epoch)"
    assert [ax.get_title() for ax in figures["five.png"].axes] == ["loss", "top-1 accuracy", lr_title]
    assert [ax.get_title() for ax in figures["ten.png"].axes] == ["loss", "top-1 accuracy", "top-5 accuracy", lr_title]
    (line,) = figures["ten.png"].axes[-1].get_lines()
    assert list(line.get_xdata()) == [1, 2, 3] and list(line.get_ydata()) == [h["lr"] for h in HISTORY]


def test_confusion_matrix_class_names_clear_the_colour_bars(figures):
    names = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    plots.plot_confusion_matrix(np.arange(25).reshape(5, 5) * 3, names, "cm.png")
    fig = figures["cm.png"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    matrices = [ax for ax in fig.axes if ax.get_images()]
    colour_bars = [ax for ax in fig.axes if ax not in matrices]
    assert len(matrices) == len(colour_bars) == 2
    labels = [t for ax in matrices for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
    assert sorted({t.get_text() for t in labels}) == names
    for bar in colour_bars:
        box = bar.get_tightbbox(renderer)
        for label in labels:
            assert not label.get_window_extent(renderer).overlaps(box), f"{label.get_text()!r} runs into a colour bar"


def test_models_say_whether_they_cut_patches():
    sizes = {name: create_model(name, num_classes=3, image_size=16).patch_size for name in MODEL_FAMILIES}
    assert sizes == {name: None if name.startswith("resnet") else 4 for name in MODEL_FAMILIES}
    # token models whose stem is convolutional cut no patches: their tokens are feature-map cells
    stems = {s: create_model("vit_micro_patch4_32", stem=s).patch_size for s in ("patch", "spt", "conv", "resnet")}
    assert stems == {"patch": 4, "spt": 4, "conv": None, "resnet": None}


@pytest.mark.parametrize("name", ["vit_micro_patch4_32", "resnet18_cifar"])
def test_patches_are_drawn_only_for_models_that_cut_patches(name, figures):
    model = create_model(name, num_classes=3, image_size=16)
    rng = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=rng), torch.arange(8) % 3)
    augment = BatchAugment(16, mean=(0.5,) * 3, std=(0.5,) * 3, channels=3)
    write_report(
        Path("run"), model, split, augment, ["a", "b", "c"], HISTORY, {"confusion_matrix": [[1, 0, 0]] * 3}, "val"
    )
    assert set(figures) == {"curves.png", "confusion_matrix.png", "predictions.png"} | (
        set() if model.patch_size is None else {"patches.png"}
    )


def test_the_predictions_and_patches_figures_show_what_the_model_saw(figures):
    """Content, not only ink: one panel per test image showing its pixels, titled with the model's own
    prediction, score and the true class, mistakes in red; the patch figure cuts the image the model sees."""
    torch.manual_seed(0)
    model = create_model("vit_micro_patch4_32", num_classes=3, image_size=16).eval()
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    augment = BatchAugment(16, mean=(0.5,) * 3, std=(0.25,) * 3, channels=3)
    names = ["cat", "dog", "fox"]
    write_report(
        Path("run"),
        model,
        Split(images, labels),
        augment,
        names,
        HISTORY,
        {"confusion_matrix": [[1] * 3] * 3},
        "test split",
    )
    with torch.no_grad():
        scores, predicted = model(augment.for_inference(images)).softmax(-1).max(-1)

    (grid,) = figures["predictions.png"].axes
    panels, titles = grid.get_images(), grid.texts
    assert len(panels) == len(titles) == 6
    frames = [patch.get_extents() for patch in grid.patches]  # red frames, in display coordinates
    for i, (panel, title) in enumerate(zip(panels, titles)):
        p, t = int(predicted[i]), int(labels[i])
        assert title.get_text() == f"{names[p]} ({float(scores[i]):.2f})\ntrue: {names[t]}"
        assert title.get_color() == ("red" if p != t else "green" if (predicted != labels).any() else "black")
        assert np.array_equal(panel.get_array(), images[i].permute(1, 2, 0).numpy())
        framed = [frame for frame in frames if frame.contains(*panel.get_window_extent().get_points().mean(0))]
        assert len(framed) == (p != t)
    left, _, top, _ = panels[0].get_extent()  # panels read left to right, then down, title above each
    assert panels[1].get_extent()[0] > left and panels[4].get_extent()[2] > top
    assert titles[0].get_position()[1] < top

    whole, cut = figures["patches.png"].axes
    assert cut.get_title() == "16 patches of 4x4" and whole.get_title() == "16x16 image"
    mosaic = cut.get_images()[0].get_array()
    assert mosaic.shape[:2] == (4 * 4 + 3, 4 * 4 + 3)  # 4x4 patches with one white line between them
    assert np.array_equal(mosaic[5:9, 10:14], images[0].permute(1, 2, 0).numpy()[4:8, 8:12])
