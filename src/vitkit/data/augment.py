"""Batched augmentation on the training device with per-sample random parameters.

Written by hand (rather than per-image PIL/torchvision transforms in worker processes) so that a whole
batch is transformed in a few tensor ops on the same device as the model: every geometric change
(resize, flip, rotation, zoom, crop with padding, RandomResizedCrop and the geometric RandAugment ops)
is folded into one affine matrix per sample and applied by a single `grid_sample`. Randomness comes
only from the generator passed in, so a seeded run is reproducible and resumable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from ..errors import VitkitError
from ..options import option

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
COLOR_OPS = ("identity", "brightness", "contrast", "color", "sharpness", "posterize", "solarize", "autocontrast")
AUTO_OPS = COLOR_OPS + GEOMETRIC_OPS


_aug = partial(option, group="augmentation")


@dataclass
class AugmentSpec:
    """What to do to a training batch; evaluation only resizes and normalises. The training
    configuration extends this class, so these fields (and their flags) are declared only here."""

    hflip: bool = _aug(False, "random horizontal flips", card=14)
    rotation: float = _aug(
        0.0, "max rotation as a fraction of a full turn (Keras RandomRotation factor)", at_least=0, card=15
    )
    zoom: float = _aug(0.0, "max zoom in/out per axis as a fraction (Keras RandomZoom factor)", at_least=0, card=16)
    crop_padding: int = _aug(
        0, "random crop after padding the stored image by this many pixels", at_least=0, card=17
    )
    crop_padding_mode: str = _aug(
        "zeros",
        "what --crop-padding pads with: zeros, or reflect (the image mirrored at its edge, the edge pixel "
        "not repeated, as airbench)",
        choices=("zeros", "reflect"),
    )
    rrc_scale: float = _aug(
        0.0, "RandomResizedCrop minimum area fraction, e.g. 0.35 (0: off)", at_least=0, at_most=1, card=18
    )
    auto_augment: str = _aug(
        "none", "automatic augmentation policy", choices=("none", "rand", "trivial"), card=19
    )
    ra_num_ops: int = _aug(2, "RandAugment: operations per image", at_least=0)
    ra_magnitude: int = _aug(9, "RandAugment: magnitude out of 30", at_least=0, at_most=30)
    random_erasing: float = _aug(
        0.0, "probability of erasing a random box per image", at_least=0, at_most=1, card=20
    )


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    if channels == 1:  # ITU-R 601 luma
        weights = x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (x * weights).sum(1, keepdim=True)
    raise ValueError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")


def _uniform(gen, n, low, high, device):
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def _blend(img, other, factor):
    return (other + factor.view(-1, 1, 1, 1) * (img - other)).clamp(0, 1)


def _grey(x):
    return to_channels(x, 1) if x.shape[1] == 3 else x


class BatchAugment:
    def __init__(self, out_size: int, mean, std, channels: int, spec: AugmentSpec | None = None):
        self.out_size = out_size
        self.channels = channels
        self.spec = spec or AugmentSpec()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        if self.mean.shape[1] not in (1, channels):
            raise VitkitError(f"normalisation has {self.mean.shape[1]} channels but the model takes {channels}")
        if self.spec.auto_augment not in ("none", "rand", "trivial"):
            raise ValueError(f"auto_augment={self.spec.auto_augment!r}: use none, rand or trivial")

    def _float(self, x: torch.Tensor) -> torch.Tensor:
        return to_channels(x.float().div_(255.0), self.channels)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.out_size and x.shape[-2] == self.out_size:
            return x
        return F.interpolate(
            x,
            size=(self.out_size, self.out_size),
            mode="bilinear",
            align_corners=False,
            antialias=x.shape[-1] > self.out_size,
        )

    def to_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float images back to uint8 pixels, to show what the model receives."""
        pixels = x * self.std.to(x.device) + self.mean.to(x.device)
        return pixels.mul(255.0).round().clamp(0, 255).to(torch.uint8)

    @torch.no_grad()
    def for_inference(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> normalised float at the model's size, no randomness."""
        return self._normalize(self.resize(self._float(x)))

    @torch.no_grad()
    def for_training(self, x: torch.Tensor, gen: torch.Generator, flips: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 NCHW -> randomly augmented, normalised float at the model's size, drawn from `gen`; `flips`
        (bool per image): which images hflip mirrors, instead of a random half."""
        s, n, dev = self.spec, x.shape[0], x.device
        x = self._float(x)
        ops = None
        if s.auto_augment != "none":
            k = 1 if s.auto_augment == "trivial" else s.ra_num_ops
            ops = torch.randint(len(AUTO_OPS), (k, n), generator=gen, device=dev)
            mags = (
                torch.rand(k, n, generator=gen, device=dev)
                if s.auto_augment == "trivial"
                else torch.full((k, n), s.ra_magnitude / 30.0, device=dev)
            )
            signs = torch.randint(0, 2, (k, n), generator=gen, device=dev) * 2.0 - 1.0
        theta, shifts = self._affine(
            n, dev, gen, ops, mags if ops is not None else None, signs if ops is not None else None, flips
        )
        if theta is not None:
            grid = F.affine_grid(theta, [n, x.shape[1], self.out_size, self.out_size], align_corners=False)
            zero_crop = s.crop_padding and shifts is None
            pad_mode = "zeros" if zero_crop or ops is not None else "reflection"
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode=pad_mode, align_corners=False)
        else:
            x = self.resize(x)
        if shifts is not None:
            x = shift_reflected(x, shifts, s.crop_padding)
        if ops is not None:
            for slot in range(ops.shape[0]):
                x = self._color_ops(x, ops[slot], mags[slot], signs[slot])
        x = self._normalize(x)
        if s.random_erasing > 0:
            x = self._erase(x, gen)
        return x

    def _affine(self, n, dev, gen, ops, mags, signs, flips=None):
        """((n, 2, 3) matrices mapping output to input coordinates, or None for a plain resize; (n, 2)
        integer (x, y) shifts to apply after them with reflected edges, or None: with zero padding the
        shifts are part of the matrices)."""
        s = self.spec
        a = torch.eye(2, device=dev).repeat(n, 1, 1)
        t = torch.zeros(n, 2, device=dev)
        changed = False
        if s.hflip:
            flip = torch.rand(n, generator=gen, device=dev) < 0.5 if flips is None else flips
            a[:, 0, 0] = torch.where(flip, -1.0, 1.0)
            changed = True
        if s.zoom > 0:  # positive factor zooms out, as in Keras: sample a larger region
            zx, zy = (1 + _uniform(gen, n, -s.zoom, s.zoom, dev) for _ in range(2))
            a = torch.diag_embed(torch.stack([zx, zy], 1)) @ a
            changed = True
        angle = torch.zeros(n, device=dev)
        if s.rotation > 0:
            angle = angle + _uniform(gen, n, -s.rotation, s.rotation, dev) * 2 * math.pi
            changed = True
        shear = torch.zeros(n, 2, device=dev)
        if ops is not None:
            for slot in range(ops.shape[0]):
                op, m = ops[slot], mags[slot] * signs[slot]
                angle = angle + torch.where(op == AUTO_OPS.index("rotate"), m * math.radians(30), 0.0)
                shear[:, 0] += torch.where(op == AUTO_OPS.index("shear_x"), m * 0.3, 0.0)
                shear[:, 1] += torch.where(op == AUTO_OPS.index("shear_y"), m * 0.3, 0.0)
                t[:, 0] += torch.where(op == AUTO_OPS.index("translate_x"), m * 0.9, 0.0)  # 0.45 of the width
                t[:, 1] += torch.where(op == AUTO_OPS.index("translate_y"), m * 0.9, 0.0)
            changed = True
        if changed:
            cos, sin = angle.cos(), angle.sin()
            rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
            shear_m = torch.eye(2, device=dev).repeat(n, 1, 1)
            shear_m[:, 0, 1], shear_m[:, 1, 0] = shear[:, 0], shear[:, 1]
            a = rot @ shear_m @ a
        if s.rrc_scale > 0:
            area = _uniform(gen, n, s.rrc_scale, 1.0, dev)
            log_ratio = _uniform(gen, n, math.log(3 / 4), math.log(4 / 3), dev)
            w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
            h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
            cx = _uniform(gen, n, -1, 1, dev) * (1 - w)
            cy = _uniform(gen, n, -1, 1, dev) * (1 - h)
            a = torch.diag_embed(torch.stack([w, h], 1)) @ a
            t = t * torch.stack([w, h], 1) + torch.stack([cx, cy], 1)
            changed = True
        shifts = None
        if s.crop_padding > 0:
            # integer shifts of the stored image, as padding then cropping does
            shifts = torch.randint(-s.crop_padding, s.crop_padding + 1, (n, 2), generator=gen, device=dev)
            if s.crop_padding_mode == "zeros":
                t = t + shifts.float() * 2 / self.out_size
                changed, shifts = True, None
        if not changed:
            return None, shifts
        return torch.cat([a, t.unsqueeze(2)], dim=2), shifts

    def _color_ops(self, x, op, mag, sign):
        out = x.clone()
        for k, name in enumerate(COLOR_OPS):
            idx = (op == k).nonzero().flatten()
            if name == "identity" or idx.numel() == 0:
                continue
            img, m, sg = x[idx], mag[idx], sign[idx]
            if name == "brightness":
                img = _blend(img, torch.zeros_like(img), 1 + 0.9 * m * sg)
            elif name == "contrast":
                mean = _grey(img).mean(dim=(1, 2, 3), keepdim=True)
                img = _blend(img, mean.expand_as(img), 1 + 0.9 * m * sg)
            elif name == "color":
                img = _blend(img, _grey(img).expand_as(img), 1 + 0.9 * m * sg)
            elif name == "sharpness":
                kernel = img.new_tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
                c = img.shape[1]
                blurred = F.conv2d(
                    F.pad(img, (1, 1, 1, 1), mode="replicate"), kernel.expand(c, 1, 3, 3).contiguous(), groups=c
                )
                img = _blend(img, blurred, 1 + 0.9 * m * sg)
            elif name == "posterize":
                levels = 2.0 ** (8 - (4 * m).round()).view(-1, 1, 1, 1)
                img = torch.floor(img * (levels - 1e-3)) / (levels - 1).clamp(min=1)
            elif name == "solarize":
                thr = (1 - m).view(-1, 1, 1, 1)
                img = torch.where(img >= thr, 1 - img, img)
            elif name == "autocontrast":
                lo = img.amin(dim=(2, 3), keepdim=True)
                hi = img.amax(dim=(2, 3), keepdim=True)
                img = torch.where(hi > lo, (img - lo) / (hi - lo).clamp(min=1e-6), img)
            out[idx] = img
        return out

    def _erase(self, x, gen):
        n, c, h, w = x.shape
        dev = x.device
        apply = torch.rand(n, generator=gen, device=dev) < self.spec.random_erasing
        area = _uniform(gen, n, 0.02, 1 / 3, dev) * h * w
        ratio = _uniform(gen, n, math.log(0.3), math.log(1 / 0.3), dev).exp()
        eh = (area * ratio).sqrt().clamp(1, h)
        ew = (area / ratio).sqrt().clamp(1, w)
        y0 = torch.rand(n, generator=gen, device=dev) * (h - eh)
        x0 = torch.rand(n, generator=gen, device=dev) * (w - ew)
        ys = torch.arange(h, device=dev).view(1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, w)
        mask = (
            (ys >= y0.view(-1, 1, 1))
            & (ys < (y0 + eh).view(-1, 1, 1))
            & (xs >= x0.view(-1, 1, 1))
            & (xs < (x0 + ew).view(-1, 1, 1))
            & apply.view(-1, 1, 1)
        )
        noise = torch.randn(x.shape, generator=gen, device=dev, dtype=x.dtype)
        return torch.where(mask.unsqueeze(1), noise, x)


def shift_reflected(x: torch.Tensor, shifts: torch.Tensor, padding: int) -> torch.Tensor:
    """Each image of NCHW `x` moved by its (x, y) pixel shift in [-padding, padding]: a crop of the image
    reflect-padded by `padding` (mirrored at the edge, the edge pixel not repeated)."""
    n, _, height, width = x.shape
    if padding >= min(height, width):
        raise VitkitError(f"--crop-padding {padding} with reflect padding must be smaller than the {height} px image")
    padded = F.pad(x, (padding,) * 4, mode="reflect")
    rows = (torch.arange(height, device=x.device) + padding + shifts[:, 1:]).view(n, 1, height, 1)
    cols = (torch.arange(width, device=x.device) + padding + shifts[:, :1]).view(n, 1, 1, width)
    images = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channels = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[images, channels, rows, cols]


def one_hot_smooth(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    return torch.full((labels.shape[0], num_classes), off, device=labels.device).scatter_(
        1, labels.unsqueeze(1), 1.0 - smoothing + off
    )


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Float targets: one-hot, smoothed, of class indices; or of multi-label 0/1 rows (N, num_classes), each
    label's binary target smoothed on its own (1 - s/2 and s/2), as two-class smoothing would."""
    if labels.ndim == 2:
        return labels.float() * (1 - smoothing) + smoothing / 2
    return one_hot_smooth(labels, num_classes, smoothing)


def mix_batch(
    x: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    mixup: float,
    cutmix: float,
    smoothing: float,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp (Zhang et al.) or CutMix (Yun et al.) with the batch reversed as partner, as timm does;
    when both are enabled each batch picks one at random. Returns images and soft targets: the partners'
    targets mixed in the proportion of their pixels (CutMix: of the pasted box's area), which for multi-label
    rows is the mixed image's share of each label."""
    targets = soft_targets(labels, num_classes, smoothing)
    if mixup <= 0 and cutmix <= 0:
        return x, targets
    dev = x.device
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(1, generator=gen, device=dev).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    # Beta(a, a) from two Gammas, drawn with our generator for reproducibility
    g1 = torch._standard_gamma(torch.full((1,), alpha, device=dev), generator=gen)
    g2 = torch._standard_gamma(torch.full((1,), alpha, device=dev), generator=gen)
    lam = (g1 / (g1 + g2)).item()
    if use_cutmix:
        h, w = x.shape[-2:]
        cut = math.sqrt(1 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy = int(torch.randint(h, (1,), generator=gen, device=dev).item())
        cx = int(torch.randint(w, (1,), generator=gen, device=dev).item())
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = x * lam + x.flip(0) * (1 - lam)
    return x, targets * lam + targets.flip(0) * (1 - lam)
