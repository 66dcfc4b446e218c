"""A corpus of awkward and broken image files, built at test time (no binaries in the repository).

Each `Case` is one kind of file a user or client might hand vitkit; `ok` says whether it is a real image
that must be classified (True) or must be refused with a clear message naming the file (False); None
leaves that to the decoder's policy (very thin strips), as long as the outcome is one of the two.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Case:
    kind: str
    filename: str
    data: bytes
    ok: bool | None


def _save(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def _photo(w: int = 48, h: int = 40, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    arr[: h // 2] //= 2  # some structure, so JPEG and resizing have something to work on
    return Image.fromarray(arr, "RGB").convert(mode)


def _png_with_size(width: int, height: int) -> bytes:
    """A valid PNG header that declares width x height, with one tiny compressed row of data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    data = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + data


def _exif_rotated_jpeg() -> bytes:
    img = _photo(60, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return _save(img, "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [_photo(32, 32, seed=i).convert("P") for i in range(4)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _multipage_tiff() -> bytes:
    pages = [_photo(32, 32, seed=i) for i in range(3)]
    return _save(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def _palette_with_transparency() -> bytes:
    img = _photo(32, 32).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _save(img, "PNG", transparency=0)


def _sixteen_bit_grey() -> bytes:
    arr = np.linspace(0, 65535, 40 * 40).reshape(40, 40).astype(np.uint16)
    return _save(Image.fromarray(arr), "PNG")  # uint16 arrays become mode I;16


def _float_tiff() -> bytes:
    return _save(Image.fromarray(np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40), "F"), "TIFF")


def build_corpus(heavy: bool = True) -> list[Case]:
    """Every kind, each as (file name, bytes). `heavy` adds a 4800 x 4800 image (23 MP, slow to decode)."""
    png = _save(_photo(), "PNG")
    jpeg = _save(_photo(), "JPEG", quality=90)
    cases = [
        Case("plain-png", "plain.png", png, True),
        Case("plain-jpeg", "plain.jpg", jpeg, True),
        Case("progressive-jpeg", "progressive.jpg", _save(_photo(), "JPEG", progressive=True), True),
        Case("one-pixel", "one_pixel.png", _save(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), True),
        Case("thin-wide", "thin_wide.png", _save(Image.new("L", (20_000, 1), 128), "PNG"), None),
        Case("thin-tall", "thin_tall.png", _save(Image.new("L", (1, 20_000), 128), "PNG"), None),
        Case("panorama", "panorama.jpg", _save(_photo(400, 40), "JPEG"), True),
        Case("grey", "grey.png", _save(_photo(mode="L"), "PNG"), True),
        Case("one-bit", "one_bit.png", _save(_photo(mode="1"), "PNG"), True),
        Case("grey-alpha", "grey_alpha.png", _save(_photo(mode="LA"), "PNG"), True),
        Case("rgba", "rgba.png", _save(_photo(mode="RGBA"), "PNG"), True),
        Case("palette-transparency", "palette.png", _palette_with_transparency(), True),
        Case("16-bit-grey", "sixteen_bit.png", _sixteen_bit_grey(), True),
        Case("float-tiff", "float.tiff", _float_tiff(), True),
        Case("cmyk-jpeg", "cmyk.jpg", _save(_photo(mode="CMYK"), "JPEG"), True),
        Case("animated-gif", "animated.gif", _animated_gif(), True),
        Case("multipage-tiff", "pages.tiff", _multipage_tiff(), True),
        Case("webp", "photo.webp", _save(_photo(), "WEBP"), True),
        Case("bmp", "photo.bmp", _save(_photo(), "BMP"), True),
        Case("exif-rotated", "rotated.jpg", _exif_rotated_jpeg(), True),
        Case("wrong-extension", "really_a_png.jpg", png, True),
        Case("zero-byte", "empty.png", b"", False),
        Case("not-an-image", "notes.png", b"these are notes, not pixels\n" * 20, False),
        Case("random-bytes", "noise.jpg", os.urandom(4096), False),
        Case("truncated-png", "cut.png", png[: len(png) // 2], False),
        Case("truncated-jpeg", "cut.jpg", jpeg[: len(jpeg) // 3], False),
        Case("png-signature-only", "signature.png", b"\x89PNG\r\n\x1a\n" + os.urandom(200), False),
        Case("declares-bomb-size", "bomb_header.png", _png_with_size(60_000, 60_000), False),
        Case("bomb", "bomb.png", _save(Image.new("1", (9000, 8000)), "PNG"), False),
    ]
    if heavy:
        cases.append(Case("huge-accepted", "huge.png", _save(Image.new("1", (4800, 4800)), "PNG"), True))
    return cases


def write_corpus(folder: Path, heavy: bool = True) -> list[tuple[Case, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for case in build_corpus(heavy):
        path = folder / case.filename
        path.write_bytes(case.data)
        written.append((case, path))
    return written
