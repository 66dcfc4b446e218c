"""Batched on-device augmentation: exact geometry, per-sample randomness, seeding, mixing."""

import numpy as np
import pytest
import torch

from vitkit.data.augment import AugmentSpec, BatchAugment, mix_batch


def images(n=8, size=16, channels=3, seed=0):
    return torch.randint(
        0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_eval_resizes_and_normalises():
    aug = BatchAugment(16, (0.5, 0.25, 0.0), (0.5, 0.25, 1.0), 3)
    x = images()
    out = aug.for_inference(x)
    expected = (x.float() / 255 - torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)) / torch.tensor(
        [0.5, 0.25, 1.0]
    ).view(1, 3, 1, 1)
    assert torch.allclose(out, expected, atol=1e-6)
    assert BatchAugment(32, (0.0,), (1.0,), 1).for_inference(images(2, 16, 1)).shape == (2, 1, 32, 32)
    grey_to_rgb = BatchAugment(16, (0.0,) * 3, (1.0,) * 3, 3).for_inference(images(2, 16, 1))
    assert torch.equal(grey_to_rgb[:, 0], grey_to_rgb[:, 2])


def test_hflip_is_exact_and_per_sample():
    aug = BatchAugment(16, (0.0,) * 3, (1.0,) * 3, 3, AugmentSpec(hflip=True))
    x = images(64)
    out = aug.for_training(x, gen())
    ref = x.float() / 255
    flipped = torch.isclose(out, ref.flip(-1), atol=1e-5).flatten(1).all(1)
    same = torch.isclose(out, ref, atol=1e-5).flatten(1).all(1)
    assert (flipped | same).all()
    assert 10 < flipped.sum() < 54  # about half, chosen per sample


def test_crop_padding_shifts_by_whole_pixels():
    aug = BatchAugment(16, (0.0,) * 3, (1.0,) * 3, 3, AugmentSpec(crop_padding=3))
    x = images(16)
    out = aug.for_training(x, gen(1))
    ref = torch.nn.functional.pad(x.float() / 255, (3, 3, 3, 3))
    for i in range(16):
        found = any(
            torch.allclose(out[i], ref[i, :, dy : dy + 16, dx : dx + 16], atol=1e-5)
            for dy in range(7)
            for dx in range(7)
        )
        assert found, f"sample {i} is not a padded crop"


@pytest.mark.parametrize(
    "spec",
    [
        AugmentSpec(hflip=True, rotation=0.02, zoom=0.2),
        AugmentSpec(rrc_scale=0.3),
        AugmentSpec(auto_augment="rand"),
        AugmentSpec(auto_augment="trivial"),
        AugmentSpec(random_erasing=1.0),
    ],
)
def test_seeded_reproducible_and_varied(spec):
    aug = BatchAugment(24, (0.5,) * 3, (0.5,) * 3, 3, spec)
    x = images(16)
    a, b, c = aug.for_training(x, gen(5)), aug.for_training(x, gen(5)), aug.for_training(x, gen(6))
    assert a.shape == (16, 3, 24, 24) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # per-sample parameters: the same image repeated comes out differently
    same = aug.for_training(x[:1].repeat(8, 1, 1, 1), gen(7))
    assert len({tuple(s.flatten().tolist()) for s in same}) > 1


def test_random_erasing_fills_a_rectangle_with_noise():
    aug = BatchAugment(16, (0.0,) * 3, (1.0,) * 3, 3, AugmentSpec(random_erasing=1.0))
    x = torch.full((4, 3, 16, 16), 128, dtype=torch.uint8)
    out = aug.for_training(x, gen())
    changed = (out - 128 / 255).abs().sum(1) > 1e-4
    for mask in changed:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert len(rows) > 0
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.float().mean() > 0.95  # one solid rectangle


def test_mixup_and_cutmix_targets():
    x = torch.randn(8, 3, 16, 16)
    labels = torch.arange(8) % 4
    for kw in (dict(mixup=0.8, cutmix=0.0), dict(mixup=0.0, cutmix=1.0)):
        mixed, targets = mix_batch(x, labels, 4, smoothing=0.1, gen=gen(3), **kw)
        assert torch.allclose(targets.sum(1), torch.ones(8))
        assert mixed.shape == x.shape and not torch.equal(mixed, x)  # exact mixing: test_augment_exact.py
    plain_x, plain_t = mix_batch(x, labels, 4, 0.0, 0.0, 0.0, gen())
    assert torch.equal(plain_x, x) and torch.equal(plain_t.argmax(1), labels)
    smooth = mix_batch(x, labels, 4, 0.0, 0.0, 0.2, gen())[1]
    assert np.isclose(smooth[0, labels[0]].item(), 0.85) and np.isclose(smooth[0, (labels[0] + 1) % 4].item(), 0.05)
