"""Decoding image files into RGB uint8 arrays safely and uniformly."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import VitkitError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# Pillow's own default is about 89M pixels; photos for classification never come near this, so a
# larger image is far more likely a decompression bomb than data.
MAX_IMAGE_PIXELS = 64_000_000
# Longest over shortest side. Panoramas stay far below; a 1 x 1,000,000 strip would otherwise be scaled
# up to size x size*1,000,000 pixels by a shortest-edge resize.
MAX_ASPECT_RATIO = 50
# JPEGs over this many pixels (48 MB decoded) are decoded at a reduced DCT scale (Pillow's draft)
# that still covers the resize; smaller ones are decoded in full, as transformers does.
DRAFT_ABOVE_PIXELS = 16_000_000
# What a command that met a bad file (training, packing) tells the user to do.
SKIP_BAD_HINT = "Fix or remove the file, or pass --skip-bad-images"


class BadImageError(VitkitError):
    """An image file that cannot be decoded (named in the message). `kind` is "unidentified" (not an
    image at all), "corrupt" (truncated or damaged), "bomb" (too many pixels) or "shape" (too thin, or
    too large once resized)."""

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16/32-bit grey is rescaled (not clipped), transparency is composited
    on white, CMYK/YCbCr/palette are converted by Pillow."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def check_image_size(width: int, height: int, name: str, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse sizes no photo has: over `max_pixels` (a decompression bomb) or over MAX_ASPECT_RATIO."""
    if width * height > max_pixels:
        raise BadImageError(
            f"{name}: {width}x{height} pixels is over the limit of {max_pixels:,} (possible decompression bomb)",
            "bomb",
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        shape = "wider than tall" if width > height else "taller than wide"
        raise BadImageError(
            f"{name}: {width}x{height} pixels is more than {MAX_ASPECT_RATIO} times {shape}; crop it to the part "
            "to classify",
            "shape",
        )


def decoded_image(img: Image.Image, name: str = "image") -> Image.Image:
    """An image already in memory made what `open_image` makes of a file: size checked, EXIF orientation
    applied, 8-bit RGB."""
    check_image_size(*img.size, name)
    return to_rgb(ImageOps.exif_transpose(img))


def open_image(
    source, max_pixels: int = MAX_IMAGE_PIXELS, name: str | None = None, min_side: int | None = None
) -> Image.Image:
    """Open a path or file-like object as RGB with EXIF orientation applied, refusing bombs, extreme
    aspect ratios and truncated files with a BadImageError that names `name` (default: the path) and
    says what is wrong. Sizes are checked from the header, before any pixel is decoded. With `min_side`,
    a JPEG over DRAFT_ABOVE_PIXELS is decoded at the smallest DCT scale keeping both sides >= min_side."""
    # a path's whole text, not Path.name: two class folders may each hold an img_001.jpg
    path = os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", None)
    name = name or path or str(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                check_image_size(*img.size, name, max_pixels)
                width, height = img.size
                if min_side and img.format == "JPEG" and width * height > DRAFT_ABOVE_PIXELS:
                    img.draft(img.mode, (min_side, min_side))
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb(img)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(f"{name}: refused as a possible decompression bomb ({e})", "bomb") from None
    except UnidentifiedImageError:
        raise BadImageError(f"{name}: not an image Pillow can read", "unidentified") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImageError(f"{name}: truncated or corrupt image ({e})") from None
