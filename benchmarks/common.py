"""Shared helpers for the benchmark scripts: machine description, timing, table and JSON output."""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def project_path(path: str) -> str:
    """A data path as the results record it: relative to the project when it is a folder on disk,
    so committed JSON names no machine's absolute paths (built-in names pass through)."""
    return os.path.relpath(path, REPO) if Path(path).is_absolute() else path


def cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("model name", "cpu family", "model", "flags", ...);
    empty where the file is missing."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():  # the first processor's block ends here
                break
            key, _, value = (part.strip() for part in line.partition(":"))
            fields.setdefault(key, value)
    except OSError:
        pass
    return fields


def machine() -> dict:
    import torch  # here, not at the top: the scripts that only move files or JSON start without torch

    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # what bf16 runs on: AMX tiles multiply several times faster than AVX512-BF16 vector instructions
        "cpu_bf16": "amx" if "amx_bf16" in flags else "avx512" if "avx512_bf16" in flags else None,
        # a virtual machine may name its CPU only "AMD EPYC": the family tells Zen 4 (25) from Zen 5 (26)
        "cpu_family": info.get("cpu family"),
        "cpu_model_number": info.get("model"),
    }


def matmul_peak(device="cpu", dtype_name: str = "float32", size: int = 2048, repeats: int = 12) -> float:
    """FLOP/s of a large square matrix product on this machine: the practical peak a training step's
    share of the hardware is measured against (the best of a few repeats, after a warm-up)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * size**3 / best


def training_flops_per_image(model, image_size: int, device="cpu") -> float:
    """Forward and backward FLOPs of one training image (matrix products and convolutions, as torch's
    FLOP counter counts them), on a batch of two."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = model.to(device).train()
    x = torch.randn(2, model.config.in_chans, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def hf_twin(model, folder: Path):
    """transformers' ViTForImageClassification holding exactly vitkit's weights (through the
    published checkpoint layout, as a user would load them)."""
    import transformers

    from vitkit.data.preprocess import Preprocessing
    from vitkit.pretrained.hf import save_hf_folder

    cfg = model.config
    preprocessing = Preprocessing(cfg.image_size, mode="stretch", mean=(0.5,) * 3, std=(0.5,) * 3)
    save_hf_folder(model, [str(i) for i in range(cfg.num_classes)], preprocessing, folder)
    return transformers.ViTForImageClassification.from_pretrained(folder).eval()


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """columns: (key, header, format spec)."""
    cells = [[h for _, h, _ in columns]] + [
        [format(r[k], f) if r.get(k) is not None else "-" for k, _, f in columns] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for j, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def write_json(path: str | os.PathLike, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path}")


def merge_rows(path: str | os.PathLike, rows: list[dict], key: str, field: str, mark: bool = False) -> list[dict]:
    """The rows saved in `path`'s list `field`, with those named like one of `rows` replaced by it;
    `mark` flags the new rows as measured in a later run than the rest."""
    path = Path(path)
    if not path.is_file():
        return rows
    new = {r[key] for r in rows}
    saved = [r for r in json.loads(path.read_text())[field] if r[key] not in new]
    return saved + [dict(r, remeasured=mark and bool(saved)) for r in rows]


def parse_overrides(pairs: list[str]) -> dict:
    """`--set` KEY=VALUE pairs; values read as YAML (numbers, booleans, strings, {mappings})."""
    import yaml

    overrides: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: write KEY=VALUE, e.g. epochs=5")
        overrides[key] = yaml.safe_load(value)
    return overrides
