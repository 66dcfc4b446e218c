"""What is wrong with each image file, and what `vitkit train` would do with it.

Each file is read once: its bytes hashed (exact duplicates), its header inspected (format, mode, size,
EXIF orientation) and, for `vitkit check`, its pixels decoded as training decodes them (`open_image`), which
finds truncated files and yields the perceptual hash (see duplicates.py). The facts are cached per file,
keyed by path, size and modification time, so a second look at an unchanged folder reads only the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..data.builtin import data_root
from ..data.images import BadImageError, check_image_size, open_image
from ..fileio import atomic_path
from ..runtime import available_cores
from .duplicates import perceptual_hash, thumbnail_signature

# Sizes no classifier's data should have: tiny images carry almost nothing once resized up, huge ones
# cost decode time for pixels the resize throws away.
TINY_SIDE = 16
HUGE_PIXELS = 40_000_000
WIDE_ASPECT = 4.0  # a centre crop of a square keeps a quarter or less of such an image
EXTENSION_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I", "F"}

# What vitkit train does with a file of each kind of problem.
STOPS = "vitkit train stops on it (with --skip-bad-images it is left out)"
TRAIN_DOES = {
    "empty": STOPS,
    "not-an-image": STOPS,
    "corrupt": STOPS,
    "too-large": STOPS,
    "extreme-aspect": STOPS,
    "wrong-extension": "vitkit train reads it (Pillow goes by the content), but other tools may not",
    "cmyk": "vitkit train converts it to RGB with Pillow; colours may shift",
    "16-bit": "vitkit train rescales it to 8 bits (grey, then RGB)",
    "transparency": "vitkit train composites it on white",
    "exif-rotation": "vitkit train turns it upright by its EXIF orientation; tools that ignore EXIF see it sideways",
    "tiny": "vitkit train scales it up, with little detail to learn from",
    "huge": "vitkit train decodes it in full and resizes it down: slow to load",
    "wide": "vitkit train's centre crop keeps only the middle of it",
}
# The problems that stop a run: such a file is left out of everything else check does.
FATAL = {"empty", "not-an-image", "corrupt", "too-large", "extreme-aspect"}
BAD_IMAGE_KINDS = {"unidentified": "not-an-image", "corrupt": "corrupt", "bomb": "too-large", "shape": "extreme-aspect"}
CACHE_VERSION = 1


@dataclass
class FileFacts:
    size: int
    mtime_ns: int
    digest: str = ""  # of the bytes: equal digests are exact duplicates
    format: str | None = None
    mode: str | None = None
    width: int = 0
    height: int = 0
    problems: list[list[str]] | None = None  # [kind, detail], see TRAIN_DOES
    decoded: bool = False  # whether the pixels were decoded (then phash/signature are set unless fatal)
    phash: str | None = None  # 64-bit perceptual hash, hex
    signature: str | None = None  # 16x16 grey thumbnail, hex

    @property
    def fatal(self) -> bool:
        return any(kind in FATAL for kind, _ in self.problems or [])


def _header_problems(path: Path, image: Image.Image) -> list[list[str]]:
    problems = []
    expected = EXTENSION_FORMATS.get(path.suffix.lower())
    same = {expected, "MPO"} if expected == "JPEG" else {expected}  # MPO: a JPEG with extra frames (phones)
    if expected and image.format and image.format not in same:
        problems.append(["wrong-extension", f"a {image.format} file named {path.suffix}"])
    mode = image.mode
    if mode == "CMYK":
        problems.append(["cmyk", "CMYK colours"])
    elif mode in SIXTEEN_BIT_MODES:
        problems.append(["16-bit", f"mode {mode}"])
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        problems.append(["transparency", f"mode {mode} with transparency"])
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block: the decode reports what matters
        orientation = 1
    if orientation not in (1, None):
        problems.append(["exif-rotation", f"EXIF orientation {orientation}"])
    width, height = image.size
    if min(width, height) < TINY_SIDE:
        problems.append(["tiny", f"{width}x{height} pixels"])
    elif width * height > HUGE_PIXELS:
        problems.append(["huge", f"{width}x{height} pixels"])
    if max(width, height) > WIDE_ASPECT * min(width, height):
        problems.append(["wide", f"{width}x{height} pixels ({max(width, height) / min(width, height):.1f}:1)"])
    return problems


def inspect_file(path: Path, decode: bool, train_size: int | None = None) -> tuple[FileFacts, np.ndarray | None]:
    """The facts of one file; with `decode`, its pixels are decoded as training decodes them, and with
    `train_size` also returned as a (train_size, train_size, 3) uint8 centre crop."""
    st = path.stat()
    facts = FileFacts(st.st_size, st.st_mtime_ns, problems=[])
    if st.st_size == 0:
        facts.problems.append(["empty", "0 bytes"])
        return facts, None
    data = path.read_bytes()
    facts.digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as image:
            facts.format, facts.mode, (facts.width, facts.height) = image.format, image.mode, image.size
            check_image_size(image.width, image.height, str(path))
            facts.problems += _header_problems(path, image)
    except BadImageError as e:
        facts.problems.append([BAD_IMAGE_KINDS[e.kind], str(e).split(": ", 1)[-1]])
        return facts, None
    except UnidentifiedImageError:
        facts.problems.append(["not-an-image", "Pillow cannot identify it"])
        return facts, None
    except (OSError, SyntaxError, ValueError) as e:  # an image format, but its header is cut short or damaged
        facts.problems.append(["corrupt", f"truncated or corrupt ({e})"])
        return facts, None
    if not decode:
        return facts, None
    facts.decoded = True
    try:
        rgb = open_image(io.BytesIO(data), name=str(path))
    except BadImageError as e:
        facts.problems.append([BAD_IMAGE_KINDS[e.kind], str(e).split(": ", 1)[-1]])
        return facts, None
    facts.phash = f"{perceptual_hash(rgb):016x}"
    facts.signature = thumbnail_signature(rgb).tobytes().hex()
    pixels = None
    if train_size:
        pixels = np.asarray(ImageOps.fit(rgb, (train_size, train_size), Image.Resampling.BICUBIC))
    return facts, pixels


class FactsCache:
    """FileFacts of a folder's files, in one JSON file under the data cache, keyed by absolute path; an
    entry counts only while its file's size and modification time are unchanged."""

    def __init__(self, root: Path, data_dir: str | os.PathLike | None = None):
        key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
        self.path = data_root(data_dir) / "check" / f"{root.resolve().name}-{key}.json"
        self.entries: dict[str, dict] = {}
        self.changed = False
        try:
            saved = json.loads(self.path.read_text())
            if saved.get("version") == CACHE_VERSION:
                self.entries = saved["files"]
        except Exception:  # no cache yet, or a damaged one: start afresh
            pass

    def get(self, key: str, need_decode: bool) -> FileFacts | None:
        """The facts of the file at absolute path `key`, if cached and the file is unchanged."""
        entry = self.entries.get(key)
        if entry is None or (need_decode and not entry["decoded"]):
            return None
        try:
            st = os.stat(key)
        except OSError:
            return None
        if entry["size"] != st.st_size or entry["mtime_ns"] != st.st_mtime_ns:
            return None
        return FileFacts(**entry)

    def put(self, key: str, facts: FileFacts) -> None:
        self.entries[key] = asdict(facts)
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps({"version": CACHE_VERSION, "files": self.entries}))
        except OSError:  # a read-only cache folder only costs the next run its speed
            pass


def inspect_files(
    paths: list[Path],
    cache: FactsCache | None,
    decode: bool,
    train_size: int | None = None,
    progress=None,
) -> tuple[list[FileFacts], list[np.ndarray | None]]:
    """Facts of every file (from `cache` when current) and, with `train_size`, their pixels (then every file
    is decoded); on threads, as Pillow releases the GIL while decoding."""
    keys = [os.path.abspath(p) for p in paths]  # not resolve(): a syscall per path component
    facts: list[FileFacts | None] = [None] * len(paths)
    pixels: list[np.ndarray | None] = [None] * len(paths)
    todo = []
    for i, key in enumerate(keys):
        cached = cache.get(key, decode) if cache and not train_size else None
        if cached is None:
            todo.append(i)
        facts[i] = cached

    def one(i: int):
        return inspect_file(paths[i], decode, train_size)

    with ThreadPoolExecutor(max_workers=min(8, available_cores() * 2)) as pool:
        for done, (i, (fresh, array)) in enumerate(zip(todo, pool.map(one, todo)), 1):
            facts[i], pixels[i] = fresh, array
            if cache:
                cache.put(keys[i], fresh)
            if progress and done % 5000 == 0:
                progress(done)
    if cache:
        cache.save()
    return facts, pixels


def file_findings(names: list[str], facts: list[FileFacts]) -> list[dict]:
    """One finding per file problem: the file, the kind, the detail and what vitkit train does with it."""
    return [
        {"path": name, "kind": kind, "detail": detail, "train": TRAIN_DOES[kind], "fatal": kind in FATAL}
        for name, f in zip(names, facts)
        for kind, detail in f.problems or []
    ]
