"""Load on a real `vitkit serve` process over loopback: requests/s and p50/p95 latency of POST /predict
(one real photo per request) at 1, 8 and 64 concurrent clients, and with --abuse the server's memory and a
small request's latency while heavy, huge, thin and many-file requests arrive.

    python benchmarks/serve_load.py --checkpoint runs/exp --label after --abuse heavy,huge,many,thin

The load generator runs on the same machine as the server, so both share its cores. Rows are merged by
--label into benchmarks/results/serve_load.json, so runs of two versions sit side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from common import REPO, SHARED_DATA, machine, merge_rows, print_table, write_json
from PIL import Image

RESULTS = REPO / "benchmarks" / "results" / "serve_load.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def photos(folder: Path, count: int) -> list[bytes]:
    """Real JPEG photos (the class folders of `folder`), or digit-like PNGs when it has none."""
    found = sorted(folder.glob("*/*.jpg"))[:count]
    if found:
        return [p.read_bytes() for p in found]
    buffers = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (i * 9 % 256, 80, 160)).save(buffer, "PNG")
        buffers.append(buffer.getvalue())
    return buffers


def png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


ABUSE = {  # name -> list of (filename, bytes) in one request
    "heavy": lambda: [("heavy.png", png(Image.new("1", (4800, 4800))))],  # 23 MP, 3 KB
    "huge": lambda: [("huge.png", png(Image.new("1", (8000, 8000))))],  # 64 MP, 8 KB
    "thin": lambda: [("thin.png", png(Image.new("L", (1_000_000, 1))))],  # 4 KB
    "many": lambda: [(f"{i}.png", png(Image.new("RGB", (8, 8)))) for i in range(1000)],  # 1,000 files, ~70 KB
}


def start_server(checkpoint: str, backend: str, precision: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # the server logs every request to stderr: into a file, as an unread pipe fills up and blocks the server
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vitkit",
            "serve",
            checkpoint,
            "--port",
            str(port),
            "--backend",
            backend,
            "--precision",
            precision,
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(log.read())
    raise RuntimeError("the server did not start within 300 s")


def multipart_request(host: str, port: int, data: bytes, path: str = "/predict") -> bytes:
    """A whole keep-alive POST of one image to `path`, built once: the load generator then only writes
    bytes and reads responses, so it takes little of the cores it shares with the server."""
    boundary = "vitkit-load"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="photo.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; "
        f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def load(base: str, payloads: list[bytes], clients: int, seconds: float) -> dict:
    host, port = base.removeprefix("http://").split(":")
    requests = [multipart_request(host, int(port), p) for p in payloads]
    latencies: list[float] = []
    failures = 0
    stop = time.perf_counter() + seconds

    async def client_loop(index: int) -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, int(port))
        i = index
        while time.perf_counter() < stop:
            request = requests[i % len(requests)]
            i += clients
            start = time.perf_counter()
            try:
                ok = await exchange(reader, writer, request) == 200
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                ok = False
                writer.close()
                reader, writer = await asyncio.open_connection(host, int(port))
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                failures += 1
        writer.close()

    begun = time.perf_counter()
    await asyncio.gather(*(client_loop(i) for i in range(clients)))
    elapsed = time.perf_counter() - begun
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else [float("nan")] * 19
    return {
        "clients": clients,
        "requests": len(latencies),
        "failures": failures,
        "req_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else None,
        "p95_ms": q[18] * 1000,
    }


def abuse(base: str, pid: int, kind: str, small: bytes, repeats: int, idle: float) -> dict:
    """RSS and a small request's latency while `repeats` requests of one abusive kind arrive back to back;
    `idle` is the server's RSS after the load runs, before any abusive request."""
    files = ABUSE[kind]()
    peak, statuses, done = [idle], [], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib(pid))
            time.sleep(0.02)

    def send() -> None:
        with httpx.Client(timeout=300) as client:
            for _ in range(repeats):
                start = time.perf_counter()
                response = client.post(base + "/predict", files=[("file", (n, d, "image/png")) for n, d in files])
                statuses.append((response.status_code, time.perf_counter() - start))
        done.set()

    threads = [threading.Thread(target=sample), threading.Thread(target=send)]
    for t in threads:
        t.start()
    latencies = []
    with httpx.Client(timeout=300) as client:
        while True:  # at least one small request, even when the abusive ones are over before it starts
            start = time.perf_counter()
            client.post(base + "/predict", files=[("file", ("small.jpg", small, "image/jpeg"))])
            latencies.append(time.perf_counter() - start)
            if done.is_set():
                break
            time.sleep(0.05)
    for t in threads:
        t.join()
    return {
        "kind": kind,
        "idle_rss_mib": idle,
        "peak_rss_mib": peak[0],
        "rss_ratio": peak[0] / idle,
        "abusive_status": sorted({s for s, _ in statuses}),
        "abusive_s": max(t for _, t in statuses),
        "small_requests": len(latencies),
        "small_max_ms": max(latencies) * 1000,
        "small_p50_ms": statistics.median(latencies) * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="run folder or checkpoint to serve (default: a 1-epoch digits run)")
    parser.add_argument("--train-model", help="model of the 1-epoch digits run made when --checkpoint is not given")
    parser.add_argument("--label", required=True, help="name of this version's rows, e.g. before / after")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--abuse", default="", help="comma-separated kinds of " + ", ".join(ABUSE))
    parser.add_argument("--repeats", type=int, default=3, help="abusive requests per kind")
    parser.add_argument(
        "--photos", type=Path, default=SHARED_DATA / "flowers-mini" / "val", help="class folders of JPEG photos"
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    checkpoint = args.checkpoint
    if checkpoint is None:
        import vitkit

        checkpoint = str(Path(tempfile.mkdtemp()) / "digits")
        model = {"model": args.train_model} if args.train_model else {}
        vitkit.train(data="digits", out=checkpoint, epochs=1, progress=False, **model)
    payloads = photos(args.photos, 32)
    proc, base = start_server(checkpoint, args.backend, args.precision)
    try:
        health = httpx.get(base + "/health").json()
        backend, precision = health["backend"], health["precision"]
        asyncio.run(load(base, payloads, 4, min(2.0, args.seconds)))  # warm-up
        rows = []
        for clients in args.clients:
            cpu = cpu_seconds(proc.pid)
            row = asyncio.run(load(base, payloads, clients, args.seconds))
            # the server's share of the cores; the rest went to the load generator and other work
            row["server_cpu_per_s"] = (cpu_seconds(proc.pid) - cpu) / args.seconds
            rows.append(dict(row, label=args.label, backend=backend, precision=precision))
        idle = rss_mib(proc.pid)
        abuse_rows = [
            dict(abuse(base, proc.pid, kind, payloads[0], args.repeats, idle), label=args.label)
            for kind in filter(None, args.abuse.split(","))
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    for r in rows:
        r["key"] = f"{r['label']}/{r['clients']}"
    for r in abuse_rows:
        r["key"] = f"{r['label']}/{r['kind']}"

    print(f"\nPOST /predict, one photo ({len(payloads[0]):,} bytes) per request, backend {backend}, {precision}")
    columns = [("label", "version", "s"), ("backend", "backend", "s"), ("precision", "precision", "s")]
    columns += [("clients", "clients", "d"), ("req_per_s", "req/s", ".1f")]
    columns += [("p50_ms", "p50 ms", ".1f"), ("p95_ms", "p95 ms", ".1f"), ("failures", "failed", "d")]
    columns += [("server_cpu_per_s", "server cores", ".2f")]
    print_table(rows, columns)
    if abuse_rows:
        print("\nabusive requests, back to back, while a small request is sent every 50 ms")
        print_table(
            [dict(r, abusive_status="/".join(map(str, r["abusive_status"]))) for r in abuse_rows],
            [
                ("label", "version", "s"),
                ("kind", "kind", "s"),
                ("abusive_status", "status", "s"),
                ("abusive_s", "abusive s", ".2f"),
                ("idle_rss_mib", "idle MiB", ".0f"),
                ("peak_rss_mib", "peak MiB", ".0f"),
                ("rss_ratio", "peak/idle", ".2f"),
                ("small_p50_ms", "small p50 ms", ".0f"),
                ("small_max_ms", "small max ms", ".0f"),
            ],
        )
    write_json(
        args.out,
        {
            "machine": machine(),
            "backend": backend,
            "load": merge_rows(args.out, rows, "key", "load"),
            "abuse": merge_rows(args.out, abuse_rows, "key", "abuse"),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
