"""Abusive clients against a real server on loopback: a heavy image, a thin one, too many files, a slow
upload and a silent connection arrive together; each gets its refusal while small requests are still
answered. (The memory and latency this costs are measured by benchmarks/serve_load.py --abuse.)"""

import io
import os
import socket
import threading
import time

import httpx
import pytest
from PIL import Image
from serving import running_server

CLIENT_TIMEOUT = 2.0


def png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def multipart(files: list[tuple[str, bytes]], boundary: str = "vitkit-boundary") -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes the connection (or answers and closes) within `seconds`."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except (TimeoutError, socket.timeout):
        return False
    except ConnectionResetError:
        return True


@pytest.mark.slow
def test_abusive_clients_are_refused_while_small_requests_are_answered(digits_run, tmp_path):
    out, _ = digits_run
    small = png(Image.new("RGB", (32, 32), (200, 30, 30)))
    heavy = png(Image.new("1", (4800, 4800)))  # 3 KB, 23 million pixels: accepted, slow to decode
    huge = png(Image.new("1", (8000, 8000)))  # 8 KB, 64 million pixels: over the request's pixel budget
    thin = png(Image.new("L", (1_000_000, 1)))  # 4 KB; scaled up naively it would be 16 x 16 million pixels
    many = [(f"{i}.png", small) for i in range(1000)]
    noise = os.urandom(9 * 2**20)  # uploads near the size limit, in flight together
    flags = ("--backend", "torch", "--client-timeout", str(CLIENT_TIMEOUT), "--max-files", "32")
    log = tmp_path / "server.log"
    with running_server(out, *flags, log=log) as (base, _):
        host, port = "127.0.0.1", int(base.rsplit(":", 1)[1])
        with httpx.Client(timeout=60) as client:
            for _ in range(20):  # warm up the model, the decoder threads and the allocator
                assert client.post(base + "/predict", files=[("file", ("s.png", small, "image/png"))]).is_success

        statuses: dict[str, list[int]] = {}

        def abuse(kind: str, files: list[tuple[str, bytes]], times: int) -> None:
            with httpx.Client(timeout=60) as client:
                for _ in range(times):
                    response = client.post(base + "/predict", files=[("file", (n, d, "image/png")) for n, d in files])
                    statuses.setdefault(kind, []).append(response.status_code)

        quitter = socket.create_connection((host, port))  # hangs up halfway through its upload
        half = multipart([("quitter.png", heavy)])
        quitter.sendall(
            f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; "
            f"boundary=vitkit-boundary\r\nContent-Length: {len(half)}\r\n\r\n".encode()
            + half[: len(half) // 2]
        )
        quitter.close()
        silent = socket.create_connection((host, port))  # connects and never sends a byte
        slow = socket.create_connection((host, port))  # sends a valid request a few bytes at a time
        body = multipart([("slow.png", small)])
        slow.sendall(
            f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; "
            f"boundary=vitkit-boundary\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        abusers = [
            threading.Thread(target=abuse, args=("heavy", [("heavy.png", heavy)], 2)),
            threading.Thread(target=abuse, args=("huge", [("huge.png", huge)], 2)),
            threading.Thread(target=abuse, args=("thin", [("thin.png", thin)], 3)),
            threading.Thread(target=abuse, args=("many", many, 3)),
            threading.Thread(target=abuse, args=("max-files", many[:32], 5)),
            *(threading.Thread(target=abuse, args=("9-MB", [("noise.png", noise)], 1)) for _ in range(4)),
        ]
        for thread in abusers:
            thread.start()
        answered = 0
        started = time.time()
        with httpx.Client(timeout=60) as client:
            while any(t.is_alive() for t in abusers) or time.time() - started < CLIENT_TIMEOUT + 1:
                if body and time.time() - started < CLIENT_TIMEOUT + 1:
                    try:
                        slow.send(body[:1])
                        body = body[1:]
                    except OSError:  # the server already gave up on this client
                        body = b""
                response = client.post(base + "/predict", files=[("file", ("s.png", small, "image/png"))])
                assert response.status_code == 200
                answered += 1
                time.sleep(0.05)
        for thread in abusers:
            thread.join()
        slow_closed = closed_within(slow, CLIENT_TIMEOUT + 2)
        silent_closed = closed_within(silent, CLIENT_TIMEOUT + 2)
        slow.close()
        silent.close()
        assert httpx.get(base + "/health").status_code == 200

    print(statuses, f"{answered} small requests answered meanwhile")
    assert statuses["heavy"] == [200, 200] and statuses["huge"] == [413, 413]
    assert set(statuses["thin"]) <= {200, 400, 413}, statuses
    assert statuses["many"] == [413] * 3 and statuses["max-files"] == [200] * 5
    assert statuses["9-MB"] == [415] * 4
    assert slow_closed and silent_closed
    assert answered >= 2
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
