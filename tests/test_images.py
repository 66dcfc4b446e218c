"""Decoding: every format and mode ends as correct RGB; bombs and broken files are refused by name."""

import io

import numpy as np
import pytest
from PIL import Image

from vitkit.data.images import BadImageError, open_image
from vitkit.data.preprocess import Preprocessing


def save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_modes_convert_to_rgb(tmp_path):
    grey = save(Image.new("L", (10, 8), 77), tmp_path / "grey.png")
    assert open_image(grey).getpixel((0, 0)) == (77, 77, 77)

    pal = Image.new("P", (6, 6))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.paste(1, (0, 0, 6, 6))
    assert open_image(save(pal, tmp_path / "pal.png")).getpixel((2, 2)) == (10, 200, 30)

    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red -> white background
    assert open_image(save(rgba, tmp_path / "rgba.png")).getpixel((1, 1)) == (255, 255, 255)
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert open_image(save(half, tmp_path / "half.png")).getpixel((1, 1))[0] in range(125, 130)

    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    r, g, b = open_image(save(cmyk, tmp_path / "cmyk.jpg", quality=95)).getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60

    deep = np.full((5, 5), 65535 // 2, dtype=np.uint16)
    path16 = save(Image.fromarray(deep), tmp_path / "deep.png")
    assert Image.open(path16).mode.startswith("I")  # really 16-bit on disk
    assert open_image(path16).getpixel((0, 0))[0] in (127, 128)

    for ext in ("webp", "bmp"):
        img = Image.new("RGB", (9, 9), (12, 150, 250))
        px = open_image(save(img, tmp_path / f"x.{ext}", **({"lossless": True} if ext == "webp" else {})))
        assert px.getpixel((3, 3)) == (12, 150, 250)


def test_exif_orientation_is_honoured(tmp_path):
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 5, 10))  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = save(img, tmp_path / "rot.jpg", exif=exif, quality=95)
    out = open_image(path)
    assert out.size == (10, 30)
    assert np.asarray(out)[:5, :, 0].mean() > 200  # the band is now on top


def test_truncated_and_non_images_are_named(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(BadImageError, match="cut.jpg"):
        Preprocessing(32).load_array(cut)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(BadImageError, match="notes.png: not an image"):
        Preprocessing(32).load_array(text)


def test_decompression_bomb_is_refused(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (9000, 8000)).save(bomb)  # 72M pixels in a few kB
    assert bomb.stat().st_size < 100_000
    with pytest.raises(BadImageError, match="decompression bomb"):
        open_image(bomb)
    with pytest.raises(BadImageError, match="decompression bomb"):
        open_image(io.BytesIO(bomb.read_bytes()))


def test_fit_square_crops_the_centre():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (10, 0, 30, 20))
    out = np.asarray(Preprocessing(10).fit(img))
    assert out.shape == (10, 10, 3) and out.mean() > 250
