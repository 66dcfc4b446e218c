"""Each augmentation does exactly what it names: geometry measured on marker images, every RandAugment /
TrivialAugment operation on known pixels, and MixUp / CutMix images checked against their own targets."""

import math

import pytest
import torch

from vitkit.data.augment import AUTO_OPS, COLOR_OPS, AugmentSpec, BatchAugment, mix_batch

SIZE = 32
CENTRE = (SIZE - 1) / 2  # pixel-centre coordinates, as grid_sample with align_corners=False uses


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def identity_augment(spec: AugmentSpec) -> BatchAugment:
    """No normalisation, so outputs are pixel values / 255."""
    return BatchAugment(SIZE, (0.0,) * 3, (1.0,) * 3, 3, spec)


def marker_images(n: int, offsets) -> torch.Tensor:
    """One 3x3 white square per channel, channel c centred at CENTRE + offsets[c] (dx, dy)."""
    x = torch.zeros(n, 3, SIZE, SIZE, dtype=torch.uint8)
    for c, (dx, dy) in enumerate(offsets):
        col, row = round(CENTRE + dx - 0.5), round(CENTRE + dy - 0.5)  # square of pixels col-1..col+1
        x[:, c, row - 1 : row + 2, col - 1 : col + 2] = 255
    return x


def centroids(out: torch.Tensor) -> torch.Tensor:
    """(n, channels, 2): intensity-weighted (x, y) of each channel, relative to the image centre."""
    axis = torch.arange(SIZE, dtype=torch.float64)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    w = out.double().clamp(min=0)
    total = w.sum(dim=(2, 3))
    cx = (w * xs).sum(dim=(2, 3)) / total - CENTRE
    cy = (w * ys).sum(dim=(2, 3)) / total - CENTRE
    return torch.stack([cx, cy], dim=-1)


def marker_offsets_in(offsets) -> torch.Tensor:
    """Where marker_images really puts each square's centre (rounded to whole pixels)."""
    return torch.tensor(
        [[round(CENTRE + dx - 0.5) - CENTRE, round(CENTRE + dy - 0.5) - CENTRE] for dx, dy in offsets],
        dtype=torch.float64,
    )


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("factor", [0.25, 0.05])
def test_rotation_turns_the_image_rigidly_about_its_centre_within_the_factor(factor):
    offsets = [(7, 0), (0, -6), (-4, 5)]
    before = marker_offsets_in(offsets)
    out = identity_augment(AugmentSpec(rotation=factor)).for_training(marker_images(64, offsets), gen(1))
    after = centroids(out)
    angle = torch.atan2(after[:, 0, 1], after[:, 0, 0]) - math.atan2(before[0, 1], before[0, 0])
    # the turn read off the first marker carries the others where a rotation about the centre puts them
    cos, sin = angle.cos().unsqueeze(1), angle.sin().unsqueeze(1)
    predicted = torch.stack([cos * before[:, 0] - sin * before[:, 1], sin * before[:, 0] + cos * before[:, 1]], -1)
    assert (predicted - after).norm(dim=-1).max() < 0.4
    bound = factor * 2 * math.pi
    assert angle.abs().max() <= bound + 0.03
    assert angle.max() > 0.6 * bound and angle.min() < -0.6 * bound  # both directions, most of the range


def test_zoom_scales_each_axis_independently_within_the_factor():
    factor = 0.2
    offsets = [(7, 0), (0, 7), (-6, 5)]
    before = marker_offsets_in(offsets)
    out = identity_augment(AugmentSpec(zoom=factor)).for_training(marker_images(64, offsets), gen(2))
    after = centroids(out)
    zoom_x = before[0, 0] / after[:, 0, 0]  # a zoom factor above 1 samples a larger region: things shrink
    zoom_y = before[1, 1] / after[:, 1, 1]
    for z in (zoom_x, zoom_y):
        assert z.min() >= 1 - factor - 0.03 and z.max() <= 1 + factor + 0.03
        assert z.min() < 1 - factor / 2 and z.max() > 1 + factor / 2
    assert (zoom_x - zoom_y).abs().max() > factor / 2  # independent per axis
    # every marker obeys both scales at once, about the centre
    predicted = before / torch.stack([zoom_x, zoom_y], -1).unsqueeze(1)
    assert (predicted - after).abs().max() < 0.3


def ramp_images(n: int) -> torch.Tensor:
    """Channel 0 holds 8 x column, channel 1 holds 8 x row: each output pixel says where it came from."""
    cols = (torch.arange(SIZE) * 8).view(1, SIZE).expand(SIZE, SIZE)
    x = torch.stack([cols, cols.t(), torch.zeros(SIZE, SIZE, dtype=torch.long)])
    return x.to(torch.uint8).unsqueeze(0).repeat(n, 1, 1, 1)


def test_random_resized_crop_is_an_axis_aligned_window_inside_the_image():
    scale = 0.3
    out = identity_augment(AugmentSpec(rrc_scale=scale)).for_training(ramp_images(64), gen(3)) * 255 / 8
    col, row = out[:, 0], out[:, 1]  # source coordinates in pixels
    inner = slice(1, SIZE - 1)  # the outermost samples may sit in the image's half-pixel border
    areas, ratios = [], []
    for c, r in zip(col, row):
        # one source column per output column and one source row per output row: no rotation, no fold
        assert torch.allclose(c, c[:1].expand_as(c), atol=1e-3) and torch.allclose(r, r[:, :1].expand_as(r), atol=1e-3)
        steps_x, steps_y = c[0, inner].diff(), r[inner, 0].diff()
        assert (steps_x > 0).all() and (steps_y > 0).all()
        assert torch.allclose(steps_x, steps_x.mean().expand_as(steps_x), atol=1e-3)  # linear: no reflection
        assert torch.allclose(steps_y, steps_y.mean().expand_as(steps_y), atol=1e-3)
        assert c.min() >= -1e-3 and c.max() <= SIZE - 1 + 1e-3 and r.min() >= -1e-3 and r.max() <= SIZE - 1 + 1e-3
        width, height = steps_x.mean().item(), steps_y.mean().item()  # fraction of the image per axis
        areas.append(width * height)
        ratios.append(width / height)
    areas, ratios = torch.tensor(areas), torch.tensor(ratios)
    assert areas.min() >= scale - 0.02 and areas.max() <= 1.0 + 1e-3
    assert areas.min() < scale + 0.15 and areas.max() > 0.8  # the whole range is used
    assert ratios.min() >= 3 / 4 - 0.02 and ratios.max() <= 4 / 3 + 0.02


# ----------------------------------------------------------------------------- RandAugment / TrivialAugment ops


def color_op(x: torch.Tensor, name: str, magnitude: float, sign: float) -> torch.Tensor:
    aug = identity_augment(AugmentSpec(auto_augment="rand"))
    n = x.shape[0]
    return aug._color_ops(
        x, torch.full((n,), COLOR_OPS.index(name)), torch.full((n,), magnitude), torch.full((n,), sign)
    )


def smooth_image() -> torch.Tensor:
    """A colourful image with values away from 0 and 1, so no blend saturates."""
    g = torch.Generator().manual_seed(0)
    return 0.3 + 0.3 * torch.rand(1, 3, 8, 8, generator=g)


def luma(x):
    return (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)


def test_identity_changes_nothing():
    x = smooth_image()
    assert torch.equal(color_op(x, "identity", 1.0, 1.0), x)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_brightness_scales_every_pixel(sign):
    x = smooth_image()
    out = color_op(x, "brightness", 0.5, sign)
    factor = 1 + 0.45 * sign
    assert torch.allclose(out, x * factor, atol=1e-6)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_contrast_scales_the_distance_from_the_mean_grey(sign):
    x = smooth_image()
    out = color_op(x, "contrast", 0.5, sign)
    grey = luma(x).mean()
    assert torch.allclose(out - grey, (x - grey) * (1 + 0.45 * sign), atol=1e-6)


def test_color_desaturates_towards_the_grey_image_and_keeps_brightness():
    x = smooth_image()
    out = color_op(x, "color", 1.0, -1.0)  # factor 0.1: nearly grey
    spread_before = x.amax(1) - x.amin(1)
    spread_after = out.amax(1) - out.amin(1)
    assert torch.allclose(spread_after, 0.1 * spread_before, atol=1e-6)
    assert torch.allclose(luma(out), luma(x), atol=1e-6)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_sharpness_sharpens_or_blurs_an_edge_and_leaves_flat_areas(sign):
    flat = torch.full((1, 3, 8, 8), 0.5)
    assert torch.allclose(color_op(flat, "sharpness", 0.5, sign), flat, atol=1e-6)
    dot = flat.clone()
    dot[:, :, 4, 4] = 0.7
    out = color_op(dot, "sharpness", 0.5, sign)
    peak = out[0, 0, 4, 4] - out[0, 0, 4, 3]
    if sign > 0:
        assert peak > 0.2 + 1e-3 and out[0, 0, 4, 3] < 0.5  # the dot stands out more, with a dark rim
    else:
        assert 0 < peak < 0.2 - 1e-3 and out[0, 0, 4, 3] > 0.5  # the dot spreads into its neighbours


def test_posterize_keeps_the_top_bits():
    ramp = torch.linspace(0, 1, 256).view(1, 1, 16, 16).repeat(1, 3, 1, 1)
    assert len(color_op(ramp, "posterize", 1.0, 1.0).unique()) == 16  # 8 - 4 bits
    assert len(color_op(ramp, "posterize", 0.5, 1.0).unique()) == 64  # 8 - 2 bits
    four_bits = color_op(ramp, "posterize", 1.0, 1.0)
    assert (four_bits.diff(dim=-1) >= 0).all() and four_bits.min() == 0 and four_bits.max() == 1


def test_solarize_inverts_the_pixels_above_the_threshold():
    x = torch.linspace(0, 1, 64).view(1, 1, 8, 8).repeat(1, 3, 1, 1)
    out = color_op(x, "solarize", 0.25, 1.0)  # threshold 0.75
    above = x >= 0.75
    assert torch.allclose(out[above], 1 - x[above]) and torch.equal(out[~above], x[~above])


def test_autocontrast_stretches_each_channel_to_the_full_range():
    x = smooth_image()
    out = color_op(x, "autocontrast", 0.5, 1.0)
    assert torch.allclose(out.amin(dim=(2, 3)), torch.zeros(1, 3))
    assert torch.allclose(out.amax(dim=(2, 3)), torch.ones(1, 3))
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    assert torch.allclose(out, (x - lo) / (hi - lo), atol=1e-6)


def geometric_matrix(name: str, magnitude: float, sign: float) -> torch.Tensor:
    aug = identity_augment(AugmentSpec(auto_augment="rand"))
    one = torch.ones(1, 1)
    op = torch.full((1, 1), AUTO_OPS.index(name))
    theta, _ = aug._affine(1, torch.device("cpu"), gen(), op, one * magnitude, one * sign)
    return theta[0]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_geometric_ops_are_the_transform_they_name(sign):
    angle = math.radians(30) * sign
    rotate = torch.tensor([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0]])
    expected = {
        "rotate": rotate,
        "shear_x": torch.tensor([[1, 0.3 * sign, 0], [0, 1, 0]]),
        "shear_y": torch.tensor([[1, 0, 0], [0.3 * sign, 1, 0]]),
        "translate_x": torch.tensor([[1, 0, 0.9 * sign], [0, 1, 0]]),  # 0.45 of the width (coordinates span 2)
        "translate_y": torch.tensor([[1, 0, 0], [0, 1, 0.9 * sign]]),
    }
    for name, matrix in expected.items():
        assert torch.allclose(geometric_matrix(name, 1.0, sign), matrix.float(), atol=1e-6), name
    # a colour op leaves the geometry alone
    assert torch.allclose(geometric_matrix("solarize", 1.0, sign), torch.eye(2, 3))


def test_randaugment_applies_one_named_operation_per_sample():
    """At full magnitude with one op per image, every output is exactly one of the named operations
    (with either sign), and over a large batch all of them are used."""
    x = torch.full((1, 3, SIZE, SIZE), 40, dtype=torch.uint8)
    x[:, 0, 8:12, 20:24] = 200  # off-centre marks, so every geometric op moves something
    x[:, 1, 22:28, 4:10] = 120
    out = identity_augment(AugmentSpec(auto_augment="rand", ra_num_ops=1, ra_magnitude=30)).for_training(
        x.repeat(300, 1, 1, 1), gen(4)
    )
    image = x.float() / 255
    candidates = {}
    for name in AUTO_OPS:
        for sign in (1.0, -1.0):
            if name in COLOR_OPS:
                candidates[name, sign] = color_op(image, name, 1.0, sign)[0]
            else:
                theta = geometric_matrix(name, 1.0, sign).unsqueeze(0)
                grid = torch.nn.functional.affine_grid(theta, [1, 3, SIZE, SIZE], align_corners=False)
                candidates[name, sign] = torch.nn.functional.grid_sample(image, grid, align_corners=False)[0]
    assert len({tuple(c.flatten().tolist()) for c in candidates.values()}) > len(AUTO_OPS)  # all distinct ops
    used = set()
    for i, sample in enumerate(out):
        matches = {name for (name, _), c in candidates.items() if torch.allclose(sample, c, atol=1e-5)}
        assert matches, f"sample {i} is none of the named operations"
        used |= matches
    assert used == set(AUTO_OPS)


# ----------------------------------------------------------------------------- mixing


def mixing_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0]) + torch.tensor([0, 0, 0, 0, 4, 4, 4, 4])  # partners differ
    return x, labels


def partner_weight(targets, labels):
    """lambda per sample, read off the soft targets (own label's weight)."""
    return targets[torch.arange(len(labels)), labels]


@pytest.mark.parametrize("seed", range(6))
def test_mixup_image_is_the_weighted_sum_its_targets_claim(seed):
    x, labels = mixing_inputs()
    mixed, targets = mix_batch(x, labels, 8, mixup=0.8, cutmix=0.0, smoothing=0.0, gen=gen(seed))
    lam = partner_weight(targets, labels)
    assert torch.allclose(lam, lam[0].expand(8)) and 0 < lam[0] < 1
    assert torch.allclose(targets[torch.arange(8), labels.flip(0)], 1 - lam)
    assert torch.allclose(mixed, lam[0] * x + (1 - lam[0]) * x.flip(0), atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_box_area_is_one_minus_lambda(seed):
    x, labels = mixing_inputs()
    mixed, targets = mix_batch(x, labels, 8, mixup=0.0, cutmix=1.0, smoothing=0.0, gen=gen(seed))
    lam = partner_weight(targets, labels)
    assert torch.allclose(lam, lam[0].expand(8))
    pasted = (mixed == x.flip(0)).all(1)  # (n, h, w): pixels taken from the partner
    kept = (mixed == x).all(1)
    assert (pasted ^ kept).all(), "every pixel is either the sample's own or its partner's"
    box = pasted[0]
    assert torch.equal(pasted, box.expand_as(pasted)), "the same box for the whole batch"
    rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
    if len(rows):
        assert box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all(), "one solid rectangle"
    assert box.float().mean().item() == pytest.approx(1 - lam[0].item(), abs=1e-6)


def test_mixup_with_label_smoothing_mixes_the_smoothed_targets():
    x, labels = mixing_inputs()
    mixed, targets = mix_batch(x, labels, 8, mixup=0.8, cutmix=0.0, smoothing=0.2, gen=gen(1))
    off, on = 0.2 / 8, 1 - 0.2 + 0.2 / 8
    lam = (targets[0, labels[0]] - off) / (on - off)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    assert targets[0, labels.flip(0)[0]].item() == pytest.approx(off + (1 - lam.item()) * (on - off), abs=1e-6)
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-6)


def test_with_both_enabled_each_batch_is_one_or_the_other():
    x, labels = mixing_inputs()
    kinds = set()
    for seed in range(12):
        mixed, targets = mix_batch(x, labels, 8, mixup=0.8, cutmix=1.0, smoothing=0.0, gen=gen(seed))
        lam = partner_weight(targets, labels)[0]
        if lam == 1:  # an empty CutMix box mixes nothing
            continue
        blended = torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
        boxed = ((mixed == x) | (mixed == x.flip(0))).all()
        assert blended != bool(boxed), seed
        kinds.add("mixup" if blended else "cutmix")
    assert kinds == {"mixup", "cutmix"}
