"""The server's limits, apart from the server so the command line can show them without importing it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

MIB = 1 << 20


def limit(default, help: str, *, flag: str, unit: float = 1, at_least: int | None = None):
    """A limit with its flag: `--FLAG` takes the value in `unit`s (e.g. MiB for a byte count), a positive
    number, or with `at_least` a whole number from that on."""
    return field(default=default, metadata={"help": help, "flag": flag, "unit": unit, "at_least": at_least})


@dataclass(frozen=True)
class ServeLimits:
    """What one client may cost the server. Requests over a limit get a 4xx (413, 408) or, when the server
    as a whole is full, 503 with Retry-After; none of them can exhaust memory or stall other clients."""

    max_upload_bytes: int = limit(10 * MIB, "one request's body", flag="max_upload_mb", unit=MIB)
    max_files: int = limit(32, "images in one request", flag="max_files", at_least=1)
    # Decoded pixels in one request, summed over its images: a 24 MP photo. Decoding costs up to ~9 bytes a
    # pixel while it lasts, so this keeps one request's decode within ~200 MB.
    max_pixels: int = limit(
        24_000_000, "decoded pixels in one request, all its images", flag="max_megapixels", unit=1_000_000
    )
    max_inflight_bytes: int = limit(
        128 * MIB,
        "request bodies received or decoded at once, all clients together; more get 503 and Retry-After",
        flag="max_inflight_mb",
        unit=MIB,
    )
    # Decoded images wait for the model after their upload's bytes are released: 147 KiB each at 224 px, so
    # without this budget many connections of many tiny files would fill memory with them.
    max_decoded_bytes: int = limit(
        128 * MIB,
        "decoded images waiting for the model, all requests together; more get 503 and Retry-After",
        flag="max_decoded_mb",
        unit=MIB,
    )
    client_timeout: float = limit(30.0, "seconds to send a request's headers, then its body", flag="client_timeout")
    keep_alive: int = limit(5, "seconds an idle connection stays open", flag="keep_alive", at_least=1)
    max_connections: int = limit(512, "open connections; more get 503", flag="max_connections", at_least=1)
    decode_threads: int = limit(0, "image decoding threads (0: one per core)", flag="decode_threads", at_least=0)

    @classmethod
    def from_flags(cls, values: dict) -> "ServeLimits":
        """The limits from their flags' values (`values` keyed by flag name, in the flags' units)."""
        limits = {}
        for f in fields(cls):
            value = values[f.metadata["flag"]] * f.metadata["unit"]
            limits[f.name] = int(value) if f.type in (int, "int") else float(value)
        return cls(**limits)
