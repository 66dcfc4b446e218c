"""Image decoding off the event loop, on threads: what the server does with each uploaded file."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image

from ..runtime import available_cores

# Images over this many pixels take long and much memory to decode: they take turns on one thread of their
# own, so that small requests never wait behind them and at most one is decoded at a time.
HEAVY_PIXELS = 4_000_000


class Decoder:
    """Image decoding off the event loop: a thread per core for ordinary images (Pillow and NumPy release
    the GIL while they work) and one thread that takes heavy images in turn."""

    def __init__(self, threads: int = 0):
        threads = threads or available_cores()
        self.light = ThreadPoolExecutor(threads, thread_name_prefix="vitkit-decode")
        self.heavy = ThreadPoolExecutor(1, thread_name_prefix="vitkit-decode-heavy")

    async def pixel_count(self, file) -> int:
        """The pixel count in the image's header (nothing is decoded); 0 when Pillow cannot tell, in
        which case decoding names what is wrong."""
        return await asyncio.get_running_loop().run_in_executor(self.light, header_pixel_count, file)

    async def decode(self, load_image, file, name: str, pixel_count: int):
        """`load_image(file, name)` on the thread for an image of `pixel_count` pixels."""
        pool = self.heavy if pixel_count > HEAVY_PIXELS else self.light
        return await asyncio.get_running_loop().run_in_executor(pool, load_image, file, name)

    def shutdown(self) -> None:
        self.light.shutdown(wait=False, cancel_futures=True)
        self.heavy.shutdown(wait=False, cancel_futures=True)


def header_pixel_count(file) -> int:
    try:
        with Image.open(file) as img:
            return img.width * img.height
    except Exception:  # unreadable headers are reported by the decoder with the file's name
        return 0
    finally:
        file.seek(0)


def image_loader(classifier):
    """file object, name -> the uint8 tensor the classifier's preprocessing makes of it (for /predict)."""
    return classifier.preprocessing.load_tensor


def image_and_crop_loader(classifier):
    """file object, name -> (the uint8 tensor image_loader makes of it, the part of the photo it shows), for
    /explain."""
    preprocessing = classifier.preprocessing

    def load(file, name: str) -> tuple[torch.Tensor, tuple[float, ...]]:
        photo = preprocessing.decode(file, name)
        return preprocessing.fitted_tensor(photo, name), preprocessing.crop_box(*photo.size)

    return load
