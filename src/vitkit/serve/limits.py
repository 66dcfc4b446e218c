"""The server's limits, apart from the server so the command line can show them without importing it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeLimits:
    """What one client may cost the server. Requests over a limit get a 4xx (413, 408) or, when the server
    as a whole is full, 503 with Retry-After; none of them can exhaust memory or stall other clients."""

    max_upload_bytes: int = 10 * 1024 * 1024  # one request's body
    max_files: int = 32  # images in one request
    # Decoded pixels in one request, summed over its images: a 24 MP photo. Decoding costs up to ~9 bytes a
    # pixel while it lasts, so this keeps one request's decode within ~200 MB.
    max_pixels: int = 24_000_000
    max_inflight_bytes: int = 128 * 1024 * 1024  # request bodies being received or decoded at once
    client_timeout: float = 30.0  # seconds a client has to send a request's headers, then again its body
    keep_alive: int = 5  # seconds an idle keep-alive connection stays open
    max_connections: int = 512  # open connections; more get 503
    decode_threads: int = 0  # 0: one per core
