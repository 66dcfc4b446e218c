"""The server's limits that protect it from the whole crowd rather than one request, each met by a real client
on loopback: the in-flight upload budget (503 and Retry-After), the connection limit, the keep-alive
timeout, the header and body deadlines, and the log line of a client that hangs up."""

import os
import socket
import time

import httpx
import pytest
from serving import running_server
from test_serve_abuse import closed_within, multipart

CLIENT_TIMEOUT = 3.0
KEEP_ALIVE = 1
MAX_CONNECTIONS = 4
FLAGS = (
    "--backend",
    "torch",
    "--max-upload-mb",
    "1",
    "--max-inflight-mb",
    "1.5",
    "--client-timeout",
    str(CLIENT_TIMEOUT),
    "--keep-alive",
    str(KEEP_ALIVE),
    "--max-connections",
    str(MAX_CONNECTIONS),
)


def post_headers(host: str, length: int) -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=vitkit-boundary\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def response_status(sock: socket.socket, seconds: float) -> int:
    sock.settimeout(seconds)
    head = sock.recv(4096).decode("latin-1")
    return int(head.split()[1])


@pytest.mark.slow  # a server process, and the seconds its deadlines take to pass
def test_crowd_limits_on_a_real_server(digits_run, tmp_path):
    log = tmp_path / "server.log"
    with running_server(digits_run[0], *FLAGS, log=log) as (base, _):
        host, port = "127.0.0.1", int(base.rsplit(":", 1)[1])

        # in flight: a slow upload holds 1,000,000 of the 1.5 MiB budget, so a second upload of 900 KB waits
        # its turn (503, Retry-After); the slow one gets 408 when its body is not in within the deadline
        slow_body = multipart([("slow.png", os.urandom(999_000))])
        slow = socket.create_connection((host, port))
        slow.sendall(post_headers(host, len(slow_body)) + slow_body[:100])
        time.sleep(0.3)
        started = time.monotonic()
        second = httpx.post(base + "/predict", files=[("file", ("b.png", os.urandom(900_000), "image/png"))])
        assert second.status_code == 503 and second.headers["retry-after"] == "1", second.text
        assert "busy with other uploads" in second.json()["error"]
        assert response_status(slow, CLIENT_TIMEOUT + 2) == 408
        assert time.monotonic() - started < CLIENT_TIMEOUT + 2
        slow.close()
        # the budget is free again: the same 900 KB of noise is now refused for what it is (not an image)
        third = httpx.post(base + "/predict", files=[("file", ("c.png", os.urandom(900_000), "image/png"))])
        assert third.status_code == 415, third.text

        # keep-alive: an idle connection after a response is closed after --keep-alive, before the header deadline
        idle = socket.create_connection((host, port))
        idle.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert response_status(idle, 10) == 200
        assert closed_within(idle, CLIENT_TIMEOUT - 0.5)
        idle.close()

        # header deadline: headers that never finish are cut off after --client-timeout, not before
        stalled = socket.create_connection((host, port))
        stalled.sendall(f"POST /predict HTTP/1.1\r\nHost: {host}\r\n".encode())
        assert not closed_within(stalled, CLIENT_TIMEOUT / 2)
        assert closed_within(stalled, CLIENT_TIMEOUT)
        stalled.close()

        # connections: with --max-connections open (and silent), one more is answered 503
        crowd = [socket.create_connection((host, port)) for _ in range(MAX_CONNECTIONS)]
        time.sleep(0.2)
        assert httpx.get(base + "/health", timeout=10).status_code == 503
        for sock in crowd:
            sock.close()
        time.sleep(0.3)
        assert httpx.get(base + "/health", timeout=10).status_code == 200

        # a client that hangs up mid-upload: one request-log line says so (499)
        quitter = socket.create_connection((host, port))
        body = multipart([("quit.png", os.urandom(50_000))])
        quitter.sendall(post_headers(host, len(body)) + body[:1000])
        time.sleep(0.2)
        quitter.close()
        deadline = time.monotonic() + 5
        while " POST /predict 499 " not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    text = log.read_text()
    assert len([line for line in text.splitlines() if " POST /predict 499 " in line]) == 1, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
