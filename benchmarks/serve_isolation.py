"""What keeping /explain off /predict's PyTorch model costs: POST /predict's requests/s and p50/p95 latency
on a real `vitkit serve --backend torch` process over loopback, alone and while clients POST /explain at the
same time, and the server's memory (RSS at rest, high-water mark).

    python benchmarks/serve_isolation.py --label copy --model vit_tiny_patch16_224 --precision bf16

Run it once per version of the server (e.g. `lock`: one lock around every use of the shared model; `copy`:
/explain on a model of its own); rows are merged by label, model and precision into
benchmarks/results/serve_isolation.json. The clients run on the same machine as the server and share its
cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import REPO, SHARED_DATA, machine, merge_rows, print_table, write_json
from serve_load import cpu_seconds, exchange, multipart_request, photos, start_server

RESULTS = REPO / "benchmarks" / "results" / "serve_isolation.json"


def memory_mib(pid: int) -> dict[str, float]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in lines) if k in ("VmRSS", "VmHWM")}


async def mixed_load(base: str, payloads: list[bytes], predictors: int, explainers: int, seconds: float) -> dict:
    """`predictors` clients POST /predict and `explainers` clients POST /explain back to back for `seconds`."""
    host, port = base.removeprefix("http://").split(":")
    latencies: dict[str, list[float]] = {"/predict": [], "/explain": []}
    failures = 0
    stop = time.perf_counter() + seconds

    async def client_loop(path: str, index: int, step: int) -> None:
        nonlocal failures
        requests = [multipart_request(host, int(port), p, path) for p in payloads]
        reader, writer = await asyncio.open_connection(host, int(port))
        i = index
        while time.perf_counter() < stop:
            start = time.perf_counter()
            status = await exchange(reader, writer, requests[i % len(requests)])
            i += step
            if status == 200:
                latencies[path].append(time.perf_counter() - start)
            else:
                failures += 1
        writer.close()

    begun = time.perf_counter()
    await asyncio.gather(
        *(client_loop("/predict", i, predictors) for i in range(predictors)),
        *(client_loop("/explain", i, explainers) for i in range(explainers)),
    )
    elapsed = time.perf_counter() - begun
    predicted = latencies["/predict"]
    return {
        "predict_clients": predictors,
        "explain_clients": explainers,
        "failures": failures,
        "predict_per_s": len(predicted) / elapsed,
        "predict_p50_ms": statistics.median(predicted) * 1000,
        "predict_p95_ms": statistics.quantiles(predicted, n=20)[18] * 1000,
        "explain_per_s": len(latencies["/explain"]) / elapsed,
    }


def untrained_checkpoint(model: str, folder: Path) -> str:
    """A checkpoint of `model` with random weights at its own input size: speed and memory only."""
    from vitkit.data.preprocess import Preprocessing
    from vitkit.models import create_model, save_model

    net = create_model(model, num_classes=10)
    preprocessing = Preprocessing(net.config.image_size, mean=(0.5,) * 3, std=(0.5,) * 3).to_dict()
    save_model(net, folder, class_names=[str(i) for i in range(10)], preprocessing=preprocessing)
    return str(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="name of this version's rows, e.g. lock / copy")
    parser.add_argument("--model", default="", help="an untrained model of this name (default: a 1-epoch digits run)")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--predict-clients", type=int, default=8)
    parser.add_argument("--explain-clients", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument(
        "--photos", type=Path, default=SHARED_DATA / "flowers-mini" / "val", help="class folders of JPEG photos"
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp())
    if args.model:
        checkpoint = untrained_checkpoint(args.model, folder / args.model)
    else:
        import vitkit

        checkpoint = str(folder / "digits")
        vitkit.train(data="digits", out=checkpoint, epochs=1, progress=False)
    model = args.model or "digits vit_micro_patch4_32"
    payloads = photos(args.photos, 32)
    proc, base = start_server(checkpoint, "torch", args.precision)
    try:
        asyncio.run(mixed_load(base, payloads, 2, 1, min(3.0, args.seconds)))  # warm-up of both endpoints
        at_rest = memory_mib(proc.pid)["VmRSS"]
        rows = []
        for explainers in (0, args.explain_clients):
            cpu = cpu_seconds(proc.pid)
            row = asyncio.run(mixed_load(base, payloads, args.predict_clients, explainers, args.seconds))
            row["server_cpu_per_s"] = (cpu_seconds(proc.pid) - cpu) / args.seconds
            row["load_average"] = os.getloadavg()[0]  # other processes on the machine share its cores
            rows.append(dict(row, label=args.label, model=model, precision=args.precision))
        high_water = memory_mib(proc.pid)["VmHWM"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    for r in rows:
        r.update(rss_at_rest_mib=at_rest, rss_high_water_mib=high_water)
        r["key"] = f"{r['label']}/{r['model']}/{r['precision']}/{r['explain_clients']}"

    print(f"\nPOST /predict with and without POST /explain at the same time, backend torch, {args.precision}")
    print_table(
        rows,
        [
            ("label", "version", "s"),
            ("model", "model", "s"),
            ("predict_clients", "predict clients", "d"),
            ("explain_clients", "explain clients", "d"),
            ("predict_per_s", "predict/s", ".1f"),
            ("predict_p50_ms", "p50 ms", ".1f"),
            ("predict_p95_ms", "p95 ms", ".1f"),
            ("explain_per_s", "explain/s", ".1f"),
            ("failures", "failed", "d"),
            ("rss_at_rest_mib", "RSS at rest MiB", ".0f"),
            ("rss_high_water_mib", "high water MiB", ".0f"),
        ],
    )
    write_json(args.out, {"machine": machine(), "rows": merge_rows(args.out, rows, "key", "rows")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
