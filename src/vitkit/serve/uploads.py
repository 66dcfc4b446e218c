"""A request's images, read within `ServeLimits`: what one request may send (size, images, pixels, time)
and what all requests together may hold at once (upload bytes in flight, decoded images waiting for the
model). Uploads stream to the form parser and are decoded by a `Decoder`, never on the event loop."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

from ..data.images import BadImageError
from ..errors import VitkitError
from .decoding import Decoder
from .limits import MIB, ServeLimits


class ClientError(Exception):
    """A request the server refuses: its HTTP status, the message for the client and any extra headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class ByteBudget:
    """A budget of bytes held at once across all requests; a request that would go past it gets 503 and
    Retry-After, saying `busy`."""

    def __init__(self, limit: int, busy: str):
        self.limit, self.busy, self.used = limit, busy, 0

    @asynccontextmanager
    async def reserve(self, size: int):
        if self.used + size > self.limit:
            raise ClientError(503, f"{self.busy}; retry in a moment", {"Retry-After": "1"})
        self.used += size
        try:
            yield
        finally:
            self.used -= size


@dataclass
class Budgets:
    """What all requests together may hold: upload bytes being received or decoded (`inflight`) and
    decoded images waiting for the model (`decoded`, `image_bytes` each)."""

    inflight: ByteBudget
    decoded: ByteBudget
    image_bytes: int

    @classmethod
    def within(cls, limits: ServeLimits, square_size: int) -> "Budgets":
        """The budgets `limits` set for images that decode to squares of `square_size` pixels a side."""
        image_bytes = 3 * square_size**2  # RGB, one byte a channel
        if limits.max_decoded_bytes < limits.max_files * image_bytes:
            raise VitkitError(
                f"--max-decoded-mb {limits.max_decoded_bytes / MIB:g} cannot hold one request of --max-files "
                f"{limits.max_files} images decoded at {square_size} px "
                f"({limits.max_files * image_bytes / MIB:.1f} MiB): raise --max-decoded-mb or lower --max-files"
            )
        return cls(
            ByteBudget(limits.max_inflight_bytes, "the server is busy with other uploads"),
            ByteBudget(limits.max_decoded_bytes, "the server is busy with other images"),
            image_bytes,
        )


def limited_receive(receive, limit: int, timeout: float):
    """The ASGI receive channel of one request, cut off (413) past `limit` body bytes and (408) when the
    whole body has not arrived within `timeout` seconds, so a huge or slow upload holds nothing for long."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    received = 0

    async def receive_within_limits():
        nonlocal received
        try:
            message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
        except asyncio.TimeoutError:
            raise ClientError(408, f"the upload did not arrive within {timeout:g} s; send it faster") from None
        received += len(message.get("body", b""))
        if received > limit:
            raise ClientError(413, f"upload is over the limit of {limit:,} bytes")
        return message

    return receive_within_limits


@asynccontextmanager
async def read_images(request: Request, limits: ServeLimits, load_image, decoder: Decoder, budgets: Budgets):
    """The request's images as (file name, `load_image(file, name)`), after checking them against `limits`;
    their decoded bytes stay reserved in `budgets.decoded` until the block that uses them ends."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ClientError(
            415, f"send images as multipart/form-data in the field 'file' (got {content_type or 'no content type'})"
        )
    limit = limits.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ClientError(413, f"upload of {int(declared):,} bytes is over the limit of {limit:,} bytes")
    if declared == "0":
        raise ClientError(400, "empty request body: attach an image in the field 'file'")
    async with AsyncExitStack() as decoded_held:
        # Bodies stream into the form parser, which keeps at most 1 MB of each file in memory (the rest in a
        # temporary file), so an upload costs the server little memory while it is received and decoded.
        async with budgets.inflight.reserve(int(declared) if declared and declared.isdigit() else limit):
            body = Request(request.scope, limited_receive(request.receive, limit, limits.client_timeout))
            try:
                form = await body.form(max_files=limits.max_files, max_fields=limits.max_files, max_part_size=64 * 1024)
            except HTTPException as e:  # Starlette's own refusals of a multipart body
                if "Too many files" in str(e.detail):
                    raise ClientError(
                        413, f"too many images in one request: send at most {limits.max_files} per request"
                    ) from None
                raise ClientError(400, f"malformed multipart body ({e.detail})") from None
            try:
                named, pixel_counts = await checked_uploads(form, limits, decoder)
                # the decoded images outlive their upload's bytes: they wait for the model, so they are
                # reserved before they are decoded and held until the request is answered
                await decoded_held.enter_async_context(budgets.decoded.reserve(len(named) * budgets.image_bytes))
                images = await decode_uploads(named, pixel_counts, load_image, decoder)
            finally:
                await form.close()
        yield images


async def checked_uploads(form, limits: ServeLimits, decoder: Decoder) -> tuple[list[tuple[str, Any]], list[int]]:
    """(name, file) of each image in the form and its pixel count, refused when over `limits`."""
    uploads = [f for f in form.getlist("file") if hasattr(f, "read")]
    if not uploads:
        raise ClientError(400, "no image in the field 'file'")
    named = []
    for upload in uploads:
        name = upload.filename or "upload"
        part_type = (upload.content_type or "").split(";")[0].strip()
        if part_type and not (part_type.startswith("image/") or part_type == "application/octet-stream"):
            raise ClientError(415, f"{name}: content type {part_type} is not an image")
        if not upload.size:
            raise ClientError(400, f"{name}: empty file")
        named.append((name, upload.file))
    pixel_counts = await asyncio.gather(*(decoder.pixel_count(file) for _, file in named))
    total = 0
    for (name, _), count in zip(named, pixel_counts):
        total += count
        if total > limits.max_pixels:
            raise ClientError(
                413,
                f"{name}: its {count:,} pixels bring the request to {total:,}, over the limit of "
                f"{limits.max_pixels:,} pixels per request; send fewer or smaller images",
            )
    return named, pixel_counts


async def decode_uploads(named, pixel_counts: list[int], load_image, decoder: Decoder) -> list[tuple[str, Any]]:
    decoded = await asyncio.gather(
        *(decoder.decode(load_image, file, name, count) for (name, file), count in zip(named, pixel_counts)),
        return_exceptions=True,
    )
    for result in decoded:
        if isinstance(result, BadImageError):
            raise ClientError(415 if result.kind == "unidentified" else 400, str(result))
        if isinstance(result, BaseException):
            raise result
    return [(name, image) for (name, _), image in zip(named, decoded)]
