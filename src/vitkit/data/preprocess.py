"""The preprocessing contract: how an image file becomes a model input.

A `Preprocessing` is saved in every checkpoint's config.json and in ONNX metadata, and it is the only
code that resizes an image for a model: training's folder decode, eval, predict, explain, the server,
the ONNX path and the Hugging Face export all go through it.

For a file the pipeline is, in training and inference alike:

1. decode (bounded, see `images.open_image`) to RGB with EXIF orientation applied;
2. make it square at `square_size` with one Pillow resize (filter `resample`) and a centre crop.
   `crop` resizes the shorter side to `resize_size` = floor(square_size / crop_pct) and the longer one in
   proportion, truncated (as transformers' and torchvision's shortest-edge resize do: a 500x335 photo to
   shortest edge 64 is 95x64); `stretch` resizes both sides to `resize_size`. The crop then keeps the
   centre square_size x square_size, offset floor((side - square_size) / 2) as transformers'
   center_crop does. Exported processors (CLIPImageProcessor, ViTImageProcessor, DeiTImageProcessor)
   compute exactly these pixels;
3. on the device (`BatchAugment.eval`): uint8 to [0, 1] floats, channel conversion, normalisation by
   mean/std. `square_size` equals `image_size` except for models trained on built-in datasets, which are
   stored at their native resolution (`decode_size`, e.g. 8 px digits) and resized to `image_size` on
   the device (bilinear, antialiased); a file is then decoded at that native size and resized the same
   way, so it reaches the model as the training images did.

Training folders are decoded by step 2 once (and cached under a key of these fields); augmentation
then works on those squares. Evaluation and inference apply steps 1-3 unchanged, so training and
inference see an image identically.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import VitkitError
from .images import BadImageError, decoded_image, open_image

MODES = ("crop", "stretch")
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
# Largest intermediate image a resize may produce before the centre crop (48 MB of RGB).
MAX_RESIZED_PIXELS = 16_000_000


@dataclass(frozen=True)
class Preprocessing:
    """How a non-square image of any size becomes the model's normalised square input."""

    image_size: int  # model input side
    mode: str = "crop"  # crop: shorter side + centre crop | stretch: both sides (ViTImageProcessor)
    crop_pct: float = 1.0  # fraction of the resized square kept by the centre crop (timm/DeiT); 1: none
    resample: str = "bicubic"  # Pillow filter: nearest | bilinear | bicubic | lanczos | box | hamming
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channels: int = 3  # model input channels (files are decoded as RGB and converted on the device)
    decode_size: int | None = None  # square files are decoded at before the device resize; None: image_size

    def __post_init__(self):
        if self.mode not in MODES:
            raise VitkitError(f"--resize-mode {self.mode!r}: use crop or stretch")
        if self.resample not in RESAMPLE:
            raise VitkitError(f"--resample {self.resample!r}: use one of {', '.join(RESAMPLE)}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise VitkitError(f"--crop-pct {self.crop_pct}: use a fraction in (0, 1], e.g. 0.875")
        for name in ("image_size", "decode_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise VitkitError(f"preprocessing {name} must be a positive integer, got {value!r}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.decode_size == self.image_size:
            object.__setattr__(self, "decode_size", None)

    # -- geometry -------------------------------------------------------------------------
    @property
    def square_size(self) -> int:
        """Side of the square a file is decoded to (before any device resize)."""
        return self.decode_size or self.image_size

    @property
    def resize_size(self) -> int:
        """Shorter side (crop) or both sides (stretch) before the centre crop; the epsilon keeps
        crop_pct = 224/248 from flooring to 247."""
        return math.floor(self.square_size / self.crop_pct + 1e-6)

    def resized_shape(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize, before the centre crop."""
        target = self.resize_size
        if self.mode == "stretch":
            return target, target
        short, long = min(width, height), max(width, height)
        new_long = int(target * long / short)
        return (target, new_long) if width <= height else (new_long, target)

    def fit(self, img: Image.Image, name: str = "image") -> Image.Image:
        """Resize and centre-crop a decoded RGB image to square_size x square_size."""
        size = self.square_size
        new_w, new_h = self.resized_shape(*img.size)
        if new_w * new_h > MAX_RESIZED_PIXELS:
            raise BadImageError(
                f"{name}: {img.width}x{img.height} pixels would be resized to {new_w}x{new_h}, over the "
                f"limit of {MAX_RESIZED_PIXELS:,} pixels; crop it to the part to classify",
                "shape",
            )
        if (new_w, new_h) != img.size:
            img = img.resize((new_w, new_h), RESAMPLE[self.resample])
        left, top = self._crop_origin(new_w, new_h)
        if (left, top, new_w, new_h) != (0, 0, size, size):
            img = img.crop((left, top, left + size, top + size))
        return img

    def _crop_origin(self, new_w: int, new_h: int) -> tuple[int, int]:
        return (new_w - self.square_size) // 2, (new_h - self.square_size) // 2

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The part of a width x height image that `fit` keeps, as (left, top, right, bottom) fractions of
        its sides, to show it on the undistorted image."""
        new_w, new_h = self.resized_shape(width, height)
        left, top = self._crop_origin(new_w, new_h)
        size = self.square_size
        return left / new_w, top / new_h, (left + size) / new_w, (top + size) / new_h

    # -- decoding -------------------------------------------------------------------------
    def decode(self, source, name: str | None = None) -> Image.Image:
        """Step 1 for a path or file object: RGB, EXIF orientation applied."""
        return open_image(source, name=name, min_side=self.resize_size)

    def fitted_tensor(self, img: Image.Image, name: str = "image") -> torch.Tensor:
        """(3, square_size, square_size) uint8 tensor of a decoded RGB image (step 2)."""
        return _chw(np.asarray(self.fit(img, name), dtype=np.uint8))

    def load_array(self, source, name: str | None = None) -> np.ndarray:
        """(square_size, square_size, 3) uint8 from a path or file object (steps 1-2 above)."""
        label = name or getattr(source, "name", None) or str(source)
        return np.asarray(self.fit(self.decode(source, name), label), dtype=np.uint8)

    def load_tensor(self, source, name: str | None = None) -> torch.Tensor:
        """(3, square_size, square_size) uint8 tensor, decoded exactly as training images are."""
        return _chw(self.load_array(source, name))

    def image_tensor(self, img: Image.Image, name: str = "image") -> torch.Tensor:
        """(3, square_size, square_size) uint8 tensor from an image already in memory (any Pillow mode):
        the checks, orientation, RGB conversion and step 2 that a file gets once decoded."""
        return self.fitted_tensor(decoded_image(img, name), name)

    def batch_augment(self, spec=None):
        """The device half (step 3), optionally with training augmentation."""
        from .augment import BatchAugment

        return BatchAugment(self.image_size, self.mean, self.std, self.channels, spec)

    def decode_key(self) -> str:
        """Everything that changes the decoded pixels, for cache keys."""
        return f"{self.mode} size={self.square_size} crop_pct={self.crop_pct} resample={self.resample}"

    # -- storage --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: dict, image_size: int | None = None, channels: int | None = None) -> "Preprocessing":
        """From a checkpoint's "preprocessing". Run folders written before the mode was recorded hold
        image_size, stored_size, channels, mean, std and free-text resize/resample notes: they were
        decoded with vitkit's original crop pipeline (shorter side, centre crop, bicubic) at stored_size."""
        size = data.get("image_size") or image_size
        if not size:
            raise VitkitError("the checkpoint's preprocessing has no image_size")
        n = data.get("channels") or channels or 3
        common = dict(
            image_size=int(size),
            mean=data.get("mean") or (0.0,) * n,
            std=data.get("std") or (1.0,) * n,
            channels=int(n),
        )
        if "mode" not in data:
            return cls(**common, decode_size=data.get("stored_size"))
        return cls(
            **common,
            mode=data["mode"],
            crop_pct=float(data.get("crop_pct", 1.0)),
            resample=data.get("resample", "bicubic"),
            decode_size=data.get("decode_size"),
        )


def _chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def run_preprocessing(
    image_size: int,
    source: Preprocessing | None = None,
    mode: str | None = None,
    crop_pct: float | None = None,
    resample: str | None = None,
) -> Preprocessing:
    """The decode of a new run: the given overrides, else the pretrained checkpoint's (`source`), else
    vitkit's default (crop, bicubic). Normalisation and channels are filled in once the data is known."""
    return Preprocessing(
        image_size=image_size,
        mode=mode or (source.mode if source else "crop"),
        crop_pct=crop_pct if crop_pct is not None else (source.crop_pct if source else 1.0),
        resample=resample or (source.resample if source else "bicubic"),
    )
