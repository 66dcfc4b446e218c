"""Imbalanced data: --sampler balanced draws every class about equally often (seeded, resumable), and
--class-weights balanced weighs the training loss by n/(k*count_c). The data is a folder of 40/10/5
images per class; the 20% validation split leaves 32/8/4 training images."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import new_trainer, write_class_folders

from vitkit.data.loader import BatchLoader
from vitkit.training.resolve import make_config

TRAIN_COUNTS = [32, 8, 4]
TINY = dict(
    image_size=16,
    model="vit_micro_patch4_32",
    model_args={"depth": 1, "embed_dim": 32, "num_heads": 2, "mlp_dim": 64},
    batch_size=4,
    amp="off",
    progress=False,
    threads=1,
)


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("imbalanced"), per_class=(40, 10, 5), size=16)


def drawn_frequencies(loader: BatchLoader, epochs: int) -> torch.Tensor:
    labels = torch.cat([labels for epoch in range(epochs) for _, labels in loader.batches(epoch)])
    return torch.bincount(labels, minlength=3).double() / len(labels)


def test_balanced_sampler_draws_every_class_about_equally(imbalanced):
    plain = new_trainer(make_config(data=str(imbalanced), **TINY)).train_loader
    balanced = new_trainer(make_config(data=str(imbalanced), sampler="balanced", **TINY)).train_loader
    assert torch.bincount(plain.split.labels).tolist() == TRAIN_COUNTS
    assert len(balanced) == len(plain) == sum(TRAIN_COUNTS) // 4  # an epoch is as long as before
    # 20 epochs: 880 draws, each class's share within 0.06 of 1/3 (about 4 standard deviations)
    assert drawn_frequencies(balanced, 20).sub(1 / 3).abs().max() < 0.06
    expected = torch.tensor(TRAIN_COUNTS, dtype=torch.float64) / sum(TRAIN_COUNTS)
    assert torch.allclose(drawn_frequencies(plain, 20), expected)  # every image once per epoch

    # seeded per epoch: a loader built afresh (a resumed run) replays an epoch's batches from any batch on
    again = BatchLoader(balanced.split, 4, shuffle=True, drop_last=True, sample_weights=balanced.sample_weights)
    first = [labels.tolist() for _, labels in balanced.batches(3)]
    assert [labels.tolist() for _, labels in again.batches(3, start_batch=4)] == first[4:]
    assert [labels.tolist() for _, labels in balanced.batches(4)] != first


def test_balanced_class_weights_reach_the_training_loss(imbalanced):
    trainer = new_trainer(make_config(data=str(imbalanced), class_weights="balanced", label_smoothing=0.0, **TINY))
    n, k = sum(TRAIN_COUNTS), 3
    weights = torch.tensor([n / (k * count) for count in TRAIN_COUNTS])
    assert torch.allclose(trainer.setup.class_weights, weights)

    labels = torch.tensor([0, 0, 1, 2])
    images = trainer.data.train.images[[trainer.data.train.labels.tolist().index(c) for c in labels.tolist()]]
    logits, loss = trainer.train_step(trainer.model, images, labels, boundary=False)
    by_hand = -(weights[labels] * logits.log_softmax(-1)[torch.arange(4), labels]).sum() / 4
    assert float(loss) == pytest.approx(float(by_hand), rel=1e-5)
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, labels, weight=weights, reduction="sum") / 4))
    assert float(loss) != pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-3)  # the weights matter

    # the validation loss stays unweighted: the same weights validate to the loss of a run without class weights
    plain = new_trainer(make_config(data=str(imbalanced), label_smoothing=0.0, **TINY))
    plain.model.load_state_dict(trainer.model.state_dict())
    assert trainer.validate()["val_loss"] == pytest.approx(plain.validate()["val_loss"], rel=1e-6)
