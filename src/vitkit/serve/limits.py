"""The server's options and limits, apart from the server so the command line can show them without
importing it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import partial

from ..errors import VitkitError
from ..options import option

MIB = 1 << 20
_serve = partial(option, group="serve", commands=("serve",))
_limit = partial(option, group="limits", commands=("serve",))
LIMITS_GROUP = {"limits": "each protects the server from one abusive or broken client"}


@dataclass
class ServeOptions:
    """Where `vitkit serve` listens and what it answers."""

    host: str = _serve("127.0.0.1", "interface to bind: loopback only by default, as the API has no authentication")
    port: int = _serve(8000, "TCP port (0: any free port)", at_least=0)
    topk: int = _serve(5, "labels returned per image", at_least=1)


@dataclass(frozen=True)
class ServeLimits:
    """What one client may cost the server. Requests over a limit get a 4xx (413, 408) or, when the server
    as a whole is full, 503 with Retry-After; none of them can exhaust memory or stall other clients. A
    byte or pixel count's flag takes it in MiB or megapixels."""

    max_upload_bytes: int = _limit(10 * MIB, "one request's body", flag="max_upload_mb", unit=MIB, above=0)
    max_files: int = _limit(32, "images in one request", at_least=1)
    # Decoded pixels in one request, summed over its images: a 24 MP photo. Decoding costs up to ~9 bytes a
    # pixel while it lasts, so this keeps one request's decode within ~200 MB.
    max_pixels: int = _limit(
        24_000_000,
        "decoded pixels in one request, all its images",
        flag="max_megapixels",
        unit=1_000_000,
        above=0,
    )
    max_inflight_bytes: int = _limit(
        128 * MIB,
        "request bodies received or decoded at once, all clients together; more get 503 and Retry-After",
        flag="max_inflight_mb",
        unit=MIB,
        above=0,
    )
    # Decoded images wait for the model after their upload's bytes are released: 147 KiB each at 224 px, so
    # without this budget many connections of many tiny files would fill memory with them.
    max_decoded_bytes: int = _limit(
        128 * MIB,
        "decoded images waiting for the model, all requests together; more get 503 and Retry-After",
        flag="max_decoded_mb",
        unit=MIB,
        above=0,
    )
    client_timeout: float = _limit(30.0, "seconds to send a request's headers, then its body", above=0)
    keep_alive: int = _limit(5, "seconds an idle connection stays open", at_least=1)
    max_connections: int = _limit(512, "open connections; more get 503", at_least=1)
    decode_threads: int = _limit(0, "image decoding threads (0, the default: one per core)", at_least=0)

    @classmethod
    def from_flags(cls, values: dict) -> "ServeLimits":
        """The limits from their flags' values (`values` keyed by flag name, in the flags' units)."""
        limits = {}
        for f in fields(cls):
            value = values[f.metadata["flag"] or f.name] * f.metadata["unit"]
            limits[f.name] = int(value) if f.type in (int, "int") else float(value)
        limits = cls(**limits)
        if limits.max_inflight_bytes < limits.max_upload_bytes:
            raise VitkitError(
                f"--max-inflight-mb {values['max_inflight_mb']:g} is below --max-upload-mb "
                f"{values['max_upload_mb']:g}: a single full-size upload could never be accepted"
            )
        return limits
