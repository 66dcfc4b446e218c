"""CIFAR-10 as one compact file that can travel with the project, and back into an image folder.

A machine that receives only the project tree (a rented GPU, say) cannot read `../shared/data`. This
script stores the class folders of `cifar10-train` in one `.npz` under `benchmarks/data/` (ignored by
git) and unpacks it there into the same class folders, which `vitkit train --data` reads as usual.

What is stored is each JPEG's own bytes, unchanged, not decoded pixels: the 50,000 files hold
43.9 MiB, and zlib, which finds the JPEG headers they repeat, makes that a 14.7 MiB file, while the
decoded uint8 pixels would take 153.6 MB (50,000 x 32 x 32 x 3), more than the 64 MiB that can
travel, and photo pixels compress little. Unchanged bytes also mean that the unpacked folder decodes
to exactly the images of the original one, with the same file names and order, so a run's
`--val-split` holds out the same images on both machines.

    python benchmarks/cifar_array.py pack                  # ../shared/data/cifar10-train -> benchmarks/data/
    python benchmarks/cifar_array.py pack --limit 30       # 30 images per class, for a quick check
    python benchmarks/cifar_array.py unpack                # benchmarks/data/*.npz -> benchmarks/data/cifar10-train/
    python benchmarks/cifar_array.py unpack --limit 250 --folder benchmarks/data/cifar10-small

The file's arrays: `jpeg` (uint8, all files' bytes end to end), `offsets` (int64, N + 1: file i is
`jpeg[offsets[i]:offsets[i + 1]]`), `labels` (int16, N), `classes` (str, the class folder names, label
order), `names` (bytes, the file names) and `sha256` (of `jpeg`, checked when unpacking).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
from common import REPO, SHARED_DATA

DEFAULT_SOURCE = SHARED_DATA / "cifar10-train"
DEFAULT_FILE = REPO / "benchmarks" / "data" / "cifar10-train-jpeg.npz"
DEFAULT_FOLDER = REPO / "benchmarks" / "data" / "cifar10-train"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
DONE = ".unpacked"  # written last into an unpacked folder: its presence means the folder is whole


def pack(source: Path, out: Path, limit: int = 0, max_mb: float = 60.0) -> dict:
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    if not classes:
        raise SystemExit(f"{source}: no class folders")
    chunks, names, labels, offsets = [], [], [], [0]
    for label, name in enumerate(classes):
        files = sorted(p for p in (source / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files[:limit] if limit else files:
            data = path.read_bytes()
            chunks.append(data)
            names.append(path.name.encode())
            labels.append(label)
            offsets.append(offsets[-1] + len(data))
    jpeg = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(
        partial,
        jpeg=jpeg,
        offsets=np.asarray(offsets, dtype=np.int64),
        labels=np.asarray(labels, dtype=np.int16),
        classes=np.asarray(classes),
        names=np.asarray(names),
        sha256=np.asarray(hashlib.sha256(jpeg.tobytes()).hexdigest()),
    )
    partial.replace(out)
    size_mb = out.stat().st_size / 2**20
    summary = {"images": len(labels), "classes": len(classes), "jpeg_mib": jpeg.nbytes / 2**20, "file_mib": size_mb}
    if size_mb > max_mb:
        raise SystemExit(f"{out}: {size_mb:.1f} MiB, over --max-mb {max_mb:g}: pack fewer images (--limit)")
    return summary


def unpack(file: Path, folder: Path, limit: int = 0) -> dict:
    """Write the stored files into `folder`/<class>/<name>; a folder already unpacked whole from the same
    file and limit is kept as it is."""
    with np.load(file, allow_pickle=False) as z:
        sha = str(z["sha256"])
        stamp = f"{sha} limit={limit}"
        if (folder / DONE).is_file() and (folder / DONE).read_text().split("\n")[0] == stamp:
            return {"images": sum(1 for _ in folder.glob("*/*")), "folder": str(folder), "reused": True}
        jpeg, offsets, labels = z["jpeg"], z["offsets"], z["labels"]
        classes, names = [str(c) for c in z["classes"]], z["names"]
    if hashlib.sha256(jpeg.tobytes()).hexdigest() != sha:
        raise SystemExit(f"{file}: checksum mismatch, the file is damaged")
    if folder.exists() and any(folder.iterdir()):
        if not (folder / DONE).is_file():
            raise SystemExit(f"{folder} is not empty and was not unpacked by this script: unpack elsewhere")
        shutil.rmtree(folder)  # another file's or limit's images must not stay mixed in
    for name in classes:
        (folder / name).mkdir(parents=True)
    data, written = jpeg.tobytes(), [0] * len(classes)
    for i, label in enumerate(labels.tolist()):
        if limit and written[label] >= limit:
            continue
        (folder / classes[label] / names[i].decode()).write_bytes(data[offsets[i] : offsets[i + 1]])
        written[label] += 1
    (folder / DONE).write_text(f"{stamp}\n{sum(written)} images from {file.name}\n")
    return {"images": sum(written), "folder": str(folder), "reused": False}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="class folders -> one .npz")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    p.add_argument("--out", type=Path, default=DEFAULT_FILE)
    p.add_argument("--limit", type=int, default=0, help="at most this many images per class (0: all)")
    p.add_argument("--max-mb", type=float, default=60.0, help="refuse a file larger than this many MiB")
    u = sub.add_parser("unpack", help=".npz -> class folders (kept if already whole)")
    u.add_argument("--file", type=Path, default=DEFAULT_FILE)
    u.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    u.add_argument("--limit", type=int, default=0, help="at most this many images per class (0: all)")
    args = parser.parse_args()
    if args.command == "pack":
        summary = pack(args.source, args.out, args.limit, args.max_mb)
        print(
            f"{args.out}: {summary['images']} images, {summary['classes']} classes, "
            f"{summary['jpeg_mib']:.1f} MiB of JPEG in a {summary['file_mib']:.1f} MiB file"
        )
    else:
        summary = unpack(args.file, args.folder, args.limit)
        print(f"{summary['folder']}: {summary['images']} images" + (" (already unpacked)" if summary["reused"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
