"""Built-in datasets by name: digits, mnist, fashion-mnist, cifar10, cifar100.

The official files are downloaded once, checked against their published checksums and cached
(`--data-dir`, else `$VITKIT_DATA`, else `~/.cache/vitkit`). Each loader returns uint8 NCHW tensors.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import MissingFile, VitkitError
from ..fileio import atomic_path
from .splits import Dataset, Split, stratified_split

# System-wide copies (Debian's dataset-fashion-mnist package) are used before downloading.
SYSTEM_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}
MIRROR_ENV = "VITKIT_DATASET_MIRROR"  # replaces the scheme+host of every URL (for local mirrors)


@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    md5: str


FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

MNIST_STYLE = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        [str(i) for i in range(10)],
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        FASHION_CLASSES,
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}
CIFAR = {
    "cifar10": (
        RemoteFile(
            "cifar-10-python.tar.gz",
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
        ),
        "cifar-10-batches-py",
    ),
    "cifar100": (
        RemoteFile(
            "cifar-100-python.tar.gz",
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
        ),
        "cifar-100-python",
    ),
}
BUILTIN = ["digits", "mnist", "fashion-mnist", "cifar10", "cifar100"]


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    root = data_dir or os.environ.get("VITKIT_DATA") or Path.home() / ".cache" / "vitkit"
    return Path(root).expanduser()


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def mirrored(url: str) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return url
    path = url.split("://", 1)[1].split("/", 1)[1]
    return mirror.rstrip("/") + "/" + path


def download(remote: RemoteFile, folder: Path, timeout: float = 30.0) -> Path:
    """Fetch `remote` into `folder` (atomically), verify its MD5, and return the path."""
    target = folder / remote.name
    if target.is_file() and md5sum(target) == remote.md5:
        return target
    url = mirrored(remote.url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(target) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                open(tmp, "wb") as out,
                tqdm(total=total, unit="B", unit_scale=True, desc=remote.name, leave=False) as bar,
            ):
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
            got = md5sum(tmp)
            if got != remote.md5:
                raise VitkitError(
                    f"{url} downloaded with MD5 {got}, expected {remote.md5}: the file is corrupt or "
                    f"was changed; delete {target} and try again"
                )
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        if isinstance(e, ValueError):
            raise
        raise MissingFile(
            f"cannot download {url} ({getattr(e, 'reason', e)}). Offline? Put {remote.name} "
            f"in {folder} (or set --data-dir / VITKIT_DATA to a folder that has it)"
        ) from None
    return target


def read_idx(path: Path) -> np.ndarray:
    """IDX (the MNIST file format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise VitkitError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise VitkitError(f"{path} is truncated: header says {shape}, found {array.size} values")
    return array.reshape(shape)


def find_local(name: str, filename: str, folder: Path) -> Path | None:
    for base in [folder] + SYSTEM_DIRS.get(name, []):
        for candidate in (base / filename, base / filename.removesuffix(".gz")):
            if candidate.is_file():
                return candidate
    return None


def load_mnist_style(name: str, root: Path) -> Dataset:
    base_url, classes, files = MNIST_STYLE[name]
    folder = root / name
    arrays = {}
    for filename, md5 in files.items():
        path = find_local(name, filename, folder) or download(RemoteFile(filename, base_url + filename, md5), folder)
        arrays[filename.split("-")[0] + "-" + filename.split("-")[1]] = read_idx(path)
    split = {}
    for prefix in ("train", "t10k"):
        images = torch.from_numpy(arrays[f"{prefix}-images"].copy()).unsqueeze(1)
        labels = torch.from_numpy(arrays[f"{prefix}-labels"].astype(np.int64))
        split[prefix] = Split(images, labels)
    return Dataset(name, split["train"], split["t10k"], list(classes))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The CIFAR 'python version' is a pickle; only plain containers and numpy arrays may come out of
    it, so a tampered archive cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def read_cifar_batch(path: Path) -> dict:
    with open(path, "rb") as f:
        try:
            return _NumpyOnlyUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise VitkitError(f"{path} is not a valid CIFAR batch ({e}); delete it and download again") from None


def _key(batch: dict, name: str):
    return batch[name.encode()] if name.encode() in batch else batch[name]


def load_cifar(name: str, root: Path) -> Dataset:
    remote, extracted = CIFAR[name]
    folder = root / name
    batches = folder / extracted
    if not batches.is_dir():
        archive = find_local(name, remote.name, folder)
        if archive is not None and md5sum(archive) != remote.md5:
            raise VitkitError(f"{archive} has MD5 {md5sum(archive)}, expected {remote.md5}: delete it and retry")
        archive = archive or download(remote, folder)
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
    label_key = "labels" if name == "cifar10" else "fine_labels"
    if name == "cifar10":
        train_files, test_files = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        meta_file, names_key = "batches.meta", "label_names"
    else:
        train_files, test_files, meta_file, names_key = ["train"], ["test"], "meta", "fine_label_names"

    def read(files):
        parts = [read_cifar_batch(batches / f) for f in files]
        images = np.concatenate([np.asarray(_key(p, "data"), dtype=np.uint8) for p in parts]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([np.asarray(_key(p, label_key), dtype=np.int64) for p in parts])
        return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels))

    meta = read_cifar_batch(batches / meta_file)
    classes = [c.decode() if isinstance(c, bytes) else c for c in _key(meta, names_key)]
    return Dataset(name, read(train_files), read(test_files), classes)


DIGITS_FILE = Path(__file__).with_name("digits.npz")


def load_digits_dataset(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """The UCI 8x8 handwritten digits as scikit-learn ships them (1,797 real images, no download),
    stored in the package with scikit-learn's exact values (0-16), with a stratified test split."""
    with np.load(DIGITS_FILE) as digits:
        pixels, targets = digits["images"], digits["labels"]
    images = torch.from_numpy((pixels / 16.0 * 255.0).round().astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(targets.astype(np.int64))
    full = Split(images, labels)
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    return Dataset("digits", full.subset(train_idx), full.subset(test_idx), [str(i) for i in range(10)])


def load_builtin(name: str, data_dir: str | os.PathLike | None = None, seed: int = 0) -> Dataset:
    if name == "digits":
        return load_digits_dataset(seed)
    root = data_root(data_dir)
    if name in MNIST_STYLE:
        return load_mnist_style(name, root)
    if name in CIFAR:
        return load_cifar(name, root)
    raise VitkitError(f"unknown dataset {name!r}: use one of {', '.join(BUILTIN)} or a folder path")
