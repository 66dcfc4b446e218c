"""Which worker pool should the server decode uploads in? Decodes the same uploads (real photos as bytes,
as the server receives them) on a thread pool and on a process pool of the same size, and reports
images/s and how long the event loop's own ticks stall meanwhile.

    python benchmarks/decode_pool.py --workers 2
    python benchmarks/decode_pool.py --photos path/to/class-folders --images 100
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from common import REPO, SHARED_DATA, machine, print_table, write_json

from vitkit.data.preprocess import Preprocessing


def decode(data: bytes, size: int):
    """What the server does with one upload (`image_loader` in vitkit.serve.decoding)."""
    return Preprocessing(size).load_tensor(io.BytesIO(data), "upload")


async def run(pool: Executor, uploads: list[bytes], size: int, concurrency: int) -> dict:
    loop = asyncio.get_running_loop()
    ticks: list[float] = []
    running = True

    async def heartbeat() -> None:  # what every other client would feel: the loop's responsiveness
        while running:
            start = loop.time()
            await asyncio.sleep(0.005)
            ticks.append(loop.time() - start - 0.005)

    beat = asyncio.create_task(heartbeat())
    gate = asyncio.Semaphore(concurrency)

    async def one(data: bytes) -> None:
        async with gate:
            await loop.run_in_executor(pool, decode, data, size)

    start = time.perf_counter()
    await asyncio.gather(*(one(d) for d in uploads))
    elapsed = time.perf_counter() - start
    running = False
    await beat
    return {"images_per_s": len(uploads) / elapsed, "max_stall_ms": max(ticks) * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=32, help="decode size (the checkpoint's)")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument(
        "--photos", type=Path, default=SHARED_DATA / "flowers-mini" / "train", help="class folders of JPEG photos"
    )
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "decode_pool.json"))
    args = parser.parse_args()
    photos = sorted(args.photos.glob("*/*.jpg"))
    if not photos:
        raise SystemExit(f"{args.photos}: no class folders of .jpg photos (--photos)")
    uploads = [p.read_bytes() for p in photos][: args.images]
    rows = []
    for name, make in (("threads", ThreadPoolExecutor), ("processes", ProcessPoolExecutor)):
        with make(args.workers) as pool:
            list(pool.map(decode, uploads[:8], [args.size] * 8))  # start the workers
            rows.append({"pool": name, **asyncio.run(run(pool, uploads, args.size, 4 * args.workers))})
    print(f"\n{len(uploads)} photos decoded to {args.size} px on {args.workers} workers")
    columns = [("pool", "pool", "s"), ("images_per_s", "images/s", ".0f"), ("max_stall_ms", "loop stall ms", ".1f")]
    print_table(rows, columns)
    write_json(args.json, {"machine": machine(), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
