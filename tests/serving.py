"""`vitkit serve` as a real uvicorn process on loopback, for the server tests."""

from __future__ import annotations

import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from conftest import subprocess_env, vitkit_cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(checkpoint, *flags: str, log: Path):
    """Yields (base URL, process); the server's stdout and stderr go to `log`."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            vitkit_cmd("serve", str(checkpoint), "--port", str(port), *flags),
            env=subprocess_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the server did not start:\n{log.read_text()}")
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
