"""Built-in datasets (real download path over loopback HTTP), IDX and CIFAR readers, image folders."""

import gzip
import hashlib
import http.server
import pickle
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_class_folders
from PIL import Image

from vitkit.data import builtin
from vitkit.data.builtin import RemoteFile, download, load_builtin, read_idx
from vitkit.data.folder import load_folder, scan_folder
from vitkit.data.preprocess import Preprocessing
from vitkit.data.splits import stratified_split


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on loopback serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_download_verifies_checksum_and_caches(http_server, tmp_path, monkeypatch):
    www, base = http_server
    payload = np.random.default_rng(0).bytes(300_000)
    (www / "files").mkdir()
    (www / "files" / "blob.bin").write_bytes(payload)
    monkeypatch.setenv("VITKIT_DATASET_MIRROR", base)
    good = RemoteFile("blob.bin", "https://example.org/files/blob.bin", hashlib.md5(payload).hexdigest())
    out = download(good, tmp_path / "cache")
    assert out.read_bytes() == payload
    (www / "files" / "blob.bin").unlink()  # cached: no second request needed
    assert download(good, tmp_path / "cache") == out

    (www / "files" / "other.bin").write_bytes(b"tampered")
    bad = RemoteFile("other.bin", "https://example.org/files/other.bin", "0" * 32)
    with pytest.raises(ValueError, match="MD5"):
        download(bad, tmp_path / "cache")
    assert not (tmp_path / "cache" / "other.bin").exists()  # nothing half-written left behind


def test_offline_error_names_url_and_folder(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("VITKIT_DATASET_MIRROR", f"http://127.0.0.1:{port}")
    monkeypatch.setitem(builtin.SYSTEM_DIRS, "fashion-mnist", [])
    with pytest.raises(FileNotFoundError) as err:
        load_builtin("mnist", tmp_path / "data")
    message = str(err.value)
    assert f"http://127.0.0.1:{port}/mnist/train-images-idx3-ubyte.gz" in message
    assert str(tmp_path / "data" / "mnist") in message


def test_mnist_style_download_end_to_end(http_server, tmp_path, monkeypatch):
    www, base = http_server
    rng = np.random.default_rng(1)
    files = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 255, (30, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.arange(30) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 255, (10, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": np.arange(10),
    }
    (www / "mnist").mkdir()
    md5 = {}
    for name, array in files.items():
        write_idx(www / "mnist" / name, array)
        md5[name] = hashlib.md5((www / "mnist" / name).read_bytes()).hexdigest()
    url, classes, _ = builtin.MNIST_STYLE["mnist"]
    monkeypatch.setitem(builtin.MNIST_STYLE, "mnist", (url, classes, md5))
    monkeypatch.setenv("VITKIT_DATASET_MIRROR", base)
    data = load_builtin("mnist", tmp_path / "data")
    assert data.train.images.shape == (30, 1, 28, 28) and data.test.images.shape == (10, 1, 28, 28)
    assert torch.equal(
        data.train.images[3, 0], torch.from_numpy(files["train-images-idx3-ubyte.gz"][3].astype(np.uint8))
    )
    assert (tmp_path / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


def test_truncated_idx_is_reported(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    write_idx(path, np.zeros((5, 4, 4)))
    raw = gzip.decompress(path.read_bytes())[:-7]
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


def test_fashion_mnist_system_copy():
    system = Path("/usr/share/datasets/fashion-mnist")
    if not system.is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    data = load_builtin("fashion-mnist")
    assert data.train.images.shape == (60000, 1, 28, 28) and len(data.test) == 10000
    assert data.class_names[9] == "Ankle boot"
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10


def write_cifar(folder: Path, fine: bool) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    label_key = b"fine_labels" if fine else b"labels"
    train_names = ["train"] if fine else [f"data_batch_{i}" for i in range(1, 6)]
    for name in train_names + ["test"]:
        batch = {b"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8), label_key: list(range(20))}
        (folder / name if fine or name != "test" else folder / "test_batch").write_bytes(pickle.dumps(batch))
    if fine:
        (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}))
    else:
        (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_official_python_format(tmp_path, name):
    extracted = builtin.CIFAR[name][1]
    write_cifar(tmp_path / name / extracted, fine=name == "cifar100")
    data = load_builtin(name, tmp_path)
    n_train = 20 if name == "cifar100" else 100
    assert data.train.images.shape == (n_train, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert len(data.class_names) == (100 if name == "cifar100" else 10)
    # channel-major rows: the first 1024 bytes are the red plane
    batch = pickle.loads(
        (tmp_path / name / extracted / ("train" if name == "cifar100" else "data_batch_1")).read_bytes()
    )
    assert torch.equal(data.train.images[0, 0].flatten(), torch.from_numpy(batch[b"data"][0][:1024]))


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    write_cifar(folder, fine=False)

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit()}))
    with pytest.raises(ValueError, match="refusing to load"):
        load_builtin("cifar10", tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_stratified_split_is_seeded_and_per_class():
    labels = torch.arange(100) % 4
    keep, held = stratified_split(labels, 0.2, seed=3)
    assert len(held) == 20 and torch.bincount(labels[held]).tolist() == [5, 5, 5, 5]
    assert set(keep.tolist()).isdisjoint(held.tolist())
    assert torch.equal(held, stratified_split(labels, 0.2, seed=3)[1])
    assert not torch.equal(held, stratified_split(labels, 0.2, seed=4)[1])


def test_folder_layouts(tmp_path):
    flat = write_class_folders(tmp_path / "flat")
    data, bad = load_folder(flat, Preprocessing(16))
    assert data.class_names == ["cat", "dog", "fox"] and data.val is None and data.test is None
    assert data.train.images.shape == (36, 3, 16, 16) and not bad
    # the red class really is red after decoding
    assert data.train.images[data.train.labels == 0][:, 0].float().mean() > 150

    split = tmp_path / "split"
    write_class_folders(split / "train", per_class=6)
    write_class_folders(split / "val", per_class=2, seed=1)
    write_class_folders(split / "test", per_class=3, seed=2)
    data, _ = load_folder(split, Preprocessing(16))
    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 9)


def test_folder_cache_is_used_and_invalidated_by_changes(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("VITKIT_DATA", str(tmp_path / "cache"))
    root = write_class_folders(tmp_path / "imgs", per_class=4)
    fresh, _ = load_folder(root, Preprocessing(16))
    (cache_file,) = (tmp_path / "cache" / "folders").glob("imgs-*.safetensors")
    # plant a marker in the cache: an unchanged folder must be served from it
    tensors = load_file(str(cache_file))
    tensors["train.images"] = torch.full_like(tensors["train.images"], 7)
    save_file(tensors, str(cache_file))
    assert (load_folder(root, Preprocessing(16))[0].train.images == 7).all()
    # touching one image changes the fingerprint: decoded again, the marker is gone
    Image.new("RGB", (20, 20), (0, 0, 0)).save(root / "cat" / "000.jpg")
    changed, _ = load_folder(root, Preprocessing(16))
    assert not (changed.train.images == 7).all()
    assert not torch.equal(changed.train.images, fresh.train.images)


def test_folder_errors_are_specific(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        scan_folder(tmp_path / "empty")
    root = write_class_folders(tmp_path / "one_empty")
    (root / "zebra").mkdir()
    with pytest.raises(ValueError, match="zebra has no images"):
        scan_folder(root)
    split = tmp_path / "split"
    write_class_folders(split / "train")
    write_class_folders(split / "val", classes=("cat", "dog", "wolf"))
    with pytest.raises(ValueError, match=r"classes differ .*missing: \['fox'\].*extra: \['wolf'\]"):
        scan_folder(split)


def test_bad_images_stop_or_are_skipped(tmp_path):
    root = write_class_folders(tmp_path / "imgs", per_class=5)
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ValueError, match=r"broken\.jpg.*--skip-bad-images"):
        load_folder(root, Preprocessing(16))
    data, bad = load_folder(root, Preprocessing(16), skip_bad=True)
    assert len(data.train) == 15 and len(bad) == 1 and "broken.jpg" in bad[0]


def test_large_folders_stream(tmp_path):
    from vitkit.data.loader import BatchLoader
    from vitkit.data.splits import FileSplit

    root = write_class_folders(tmp_path / "imgs", per_class=5)
    data, _ = load_folder(root, Preprocessing(16), memory_limit_gb=1e-6)
    assert isinstance(data.train, FileSplit)
    in_memory, _ = load_folder(root, Preprocessing(16), cache=False)
    streamed = torch.cat([x for x, _ in BatchLoader(data.train, 4, shuffle=False, workers=2).batches()])
    assert torch.equal(streamed, in_memory.train.images)
