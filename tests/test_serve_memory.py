"""The server's memory bound under a crowd of many-image requests, on a real server on loopback: 512
connections of 32 tiny images each, which decode to 224 px squares (147 KiB each, 2.3 GiB for all of them),
must keep the server's RSS within the bound docs/export-serving.md states; the excess gets 503 and
Retry-After, and the server keeps answering."""

import asyncio
import io
import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import run_vitkit
from PIL import Image
from serving import running_server
from test_serve_abuse import multipart

MIB = 1 << 20
CONNECTIONS, FILES = 512, 32
DECODE_SIZE = 224
LIMITS = {  # the flags, and what docs/export-serving.md's memory bound is made of
    "max_inflight_mb": 16,
    "max_decoded_mb": 64,
    "max_connections": CONNECTIONS + 64,  # more than the crowd: the decoded-image budget, not this, refuses
    "max_megapixels": 1,
    "decode_threads": 2,
}


def stated_bound_mib(at_rest_mib: float) -> float:
    """The bound docs/export-serving.md states: the server at rest, the in-flight and decoded budgets,
    0.3 MB per connection, 9 bytes a pixel of an image on the heavy-image thread (up to --max-megapixels)
    and on each decoding thread (up to 4 MP), and a batch of 32 images at 9 times their decoded bytes."""
    request_pixels = LIMITS["max_megapixels"] * 1e6
    work = 0.3e6 * LIMITS["max_connections"]
    work += 9 * (request_pixels + min(4e6, request_pixels) * LIMITS["decode_threads"])
    work += 9 * 32 * 3 * DECODE_SIZE**2
    return at_rest_mib + LIMITS["max_inflight_mb"] + LIMITS["max_decoded_mb"] + work / MIB


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines) if k in ("VmRSS", "VmHWM")}


def decoding_at(run: Path, out: Path, side: int) -> Path:
    """A copy of a run's checkpoint whose preprocessing decodes images to side x side before the model
    resizes them to its input: the memory of 224 px images with the digits model's speed."""
    shutil.copytree(run / "best", out)
    config = json.loads((out / "config.json").read_text())
    config["preprocessing"]["decode_size"] = side
    (out / "config.json").write_text(json.dumps(config))
    return out


def tiny_png(seed: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


async def crowd(host: str, port: int, body: bytes) -> list[tuple[int, str | None]]:
    """CONNECTIONS clients, each sending one POST /predict with `body` at once; (status, Retry-After) each,
    status 0 for a connection closed without an answer."""
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=vitkit-boundary\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()

    async def one() -> tuple[int, str | None]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(head + body)
            await writer.drain()
            status_line = (await reader.readline()).split()
            if not status_line:
                return 0, None  # closed without an answer
            status = int(status_line[1])
            retry_after = None
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "retry-after":
                    retry_after = value.strip()
            return status, retry_after
        finally:
            writer.close()

    return await asyncio.gather(*(one() for _ in range(CONNECTIONS)))


@pytest.mark.slow  # a server process and 16,384 images
def test_a_crowd_of_many_image_requests_stays_within_the_memory_bound(digits_run, tmp_path):
    checkpoint = decoding_at(digits_run[0], tmp_path / "decode224", DECODE_SIZE)
    files = [(f"{i}.png", tiny_png(i)) for i in range(FILES)]
    body = multipart(files)
    flags = ["--backend", "torch"]
    for flag, value in LIMITS.items():
        flags += ["--" + flag.replace("_", "-"), str(value)]
    log = tmp_path / "server.log"
    with running_server(checkpoint, *flags, log=log) as (base, proc):
        host, port = "127.0.0.1", int(base.rsplit(":", 1)[1])
        upload = [("file", (name, data, "image/png")) for name, data in files]
        with httpx.Client(timeout=60) as client:
            for _ in range(5):  # warm up the model, the decoder threads and the allocator
                assert client.post(base + "/predict", files=upload).status_code == 200
        at_rest = memory_kib(proc.pid)["VmRSS"] / 1024
        bound = stated_bound_mib(at_rest)
        peak, over, done = [at_rest], threading.Event(), threading.Event()

        def watch() -> None:  # stops the server past its bound, so a broken bound cannot take the machine's memory
            while not done.is_set():
                peak[0] = max(peak[0], memory_kib(proc.pid)["VmRSS"] / 1024)
                if peak[0] > bound:
                    over.set()
                    proc.kill()
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        started = time.monotonic()
        try:
            answers = asyncio.run(crowd(host, port, body))
        finally:
            done.set()
            watcher.join()
        elapsed = time.monotonic() - started
        assert not over.is_set(), f"RSS {peak[0]:.0f} MiB went past the bound of {bound:.0f} MiB"
        high_water = memory_kib(proc.pid)["VmHWM"] / 1024
        assert httpx.post(base + "/predict", files=upload, timeout=60).status_code == 200
    statuses = [status for status, _ in answers]
    print(
        f"at rest {at_rest:.0f} MiB, peak {peak[0]:.0f} MiB (high water {high_water:.0f}), bound {bound:.0f} MiB; "
        f"{statuses.count(200)} answered, {statuses.count(503)} refused in {elapsed:.1f} s"
    )
    assert high_water <= bound
    assert set(statuses) <= {200, 503} and statuses.count(200) > 0 and statuses.count(503) > 0, statuses
    assert all(retry_after == "1" for status, retry_after in answers if status == 503)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_a_decoded_budget_that_cannot_hold_one_request_is_refused_at_start(digits_run, tmp_path):
    checkpoint = decoding_at(digits_run[0], tmp_path / "decode224", DECODE_SIZE)
    proc = run_vitkit("serve", str(checkpoint), "--port", "0", "--max-decoded-mb", "4", "--max-files", "32")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--max-decoded-mb 4 cannot hold one request of --max-files 32 images decoded at 224 px" in proc.stderr
