"""The request log: one info line per request (client, method, path, status, milliseconds) on the
`vitkit.serve` logger, which `vitkit serve` writes to stderr."""

from __future__ import annotations

import logging
import sys
import time

request_log = logging.getLogger("vitkit.serve")


class RequestLog:
    """ASGI middleware: one info line per request, once its response has gone out (or failed)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 0

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        except BaseException:
            status = status or 500
            raise
        finally:
            client = (scope.get("client") or ("-",))[0]
            path = scope.get("raw_path", b"").decode("latin-1") or scope["path"]  # as sent: no decoded newlines
            elapsed = (time.perf_counter() - start) * 1000
            request_log.info("%s %s %s %d %.1f ms", client, scope["method"], path, status, elapsed)


def log_requests_to_stderr() -> None:
    if not request_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        request_log.addHandler(handler)
    request_log.setLevel(logging.INFO)
    request_log.propagate = False
